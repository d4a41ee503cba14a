//! The gRPC client connection every client of the coordinator uses (the CLI, workers,
//! benchmarks and tests): the channel (TLS where the URL says https), the bearer token on
//! every call, and why a call could not reach the coordinator.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A gRPC channel to `url` with `token` on every call; connects lazily and reconnects. An
/// `https://` URL speaks TLS, trusting the system's roots and, when given, the CA in the PEM
/// file `ca_cert` (a private CA).
pub fn channel(
    url: &str,
    token: &str,
    ca_cert: Option<&Path>,
) -> Result<(Channel, Bearer), String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("`{url}` is not a coordinator URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read the CA certificate {} (--ca-cert): {e}",
                    path.display()
                )
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS to {url}: {e}"))?;
    } else if let Some(path) = ca_cert {
        return Err(format!(
            "a CA certificate ({}) was given but `{url}` is not https://: use https:// to speak TLS",
            path.display()
        ));
    }
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token has characters a header cannot carry".to_owned())?;
    Ok((endpoint.connect_lazy(), Bearer(value)))
}

/// Why a call failed to reach the coordinator, from the innermost cause of a transport
/// error (tonic's own message says only "transport error").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// The coordinator's TLS certificate is not trusted here: the CA must be given.
    UntrustedCertificate(String),
    /// Anything else (refused, timed out, name not found ...).
    Other(String),
}

impl Unreachable {
    /// The innermost cause of `status`.
    pub fn of(status: &tonic::Status) -> Unreachable {
        let mut cause = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            cause = e.to_string();
            source = e.source();
        }
        if cause.contains("certificate") {
            Unreachable::UntrustedCertificate(cause)
        } else {
            Unreachable::Other(cause)
        }
    }
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::UntrustedCertificate(cause) => write!(
                f,
                "{cause}: the coordinator's TLS certificate is not trusted here; give the CA \
                 that signed it with --ca-cert (HLSFARM_CA_CERT for the CLI, worker.ca_cert for \
                 workers)"
            ),
            Unreachable::Other(cause) => f.write_str(cause),
        }
    }
}
