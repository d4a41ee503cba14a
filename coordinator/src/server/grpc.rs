//! The gRPC adapters: the Operator and Worker services, each call a few lines that hand the
//! message to the core ([`Coordinator`]) and map its [`Error`] to a status (the one map is
//! [`Error::status`]). The HTTP adapter is [`super::http`]; neither holds any logic.

use std::pin::Pin;
use std::sync::Arc;

use hlsfarm_proto::v1::{self, operator_server::Operator, worker_server::Worker};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{Coordinator, Error};

/// The Operator service over a coordinator.
pub(super) struct OperatorApi {
    c: Arc<Coordinator>,
}

impl OperatorApi {
    /// The service.
    pub(super) fn new(c: Arc<Coordinator>) -> OperatorApi {
        OperatorApi { c }
    }
}

/// The Worker service over a coordinator.
pub(super) struct WorkerApi {
    c: Arc<Coordinator>,
}

impl WorkerApi {
    /// The service.
    pub(super) fn new(c: Arc<Coordinator>) -> WorkerApi {
        WorkerApi { c }
    }
}

/// The gRPC adapter: each call hands its message to the core and maps its error.
#[tonic::async_trait]
impl Operator for OperatorApi {
    async fn upload_model(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadModelResponse>, Status> {
        let chunks = request
            .into_inner()
            .map(|c| c.map_err(|s| Error::invalid(format!("upload interrupted: {}", s.message()))));
        Ok(Response::new(self.c.upload_model(chunks).await?))
    }

    async fn submit_sweep(
        &self,
        request: Request<v1::SubmitSweepRequest>,
    ) -> Result<Response<v1::SubmitSweepResponse>, Status> {
        Ok(Response::new(
            self.c.submit_sweep(request.into_inner()).await?,
        ))
    }

    async fn add_models(
        &self,
        request: Request<v1::AddModelsRequest>,
    ) -> Result<Response<v1::SubmitSweepResponse>, Status> {
        Ok(Response::new(
            self.c.add_models(request.into_inner()).await?,
        ))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        Ok(Response::new(
            self.c.get_status(request.into_inner()).await?,
        ))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let events = self.c.watch(request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            events.map(|e| e.map_err(Status::from)),
        )))
    }

    async fn get_results(
        &self,
        request: Request<v1::GetResultsRequest>,
    ) -> Result<Response<v1::GetResultsResponse>, Status> {
        Ok(Response::new(
            self.c.get_results(request.into_inner()).await?,
        ))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        Ok(Response::new(self.c.cancel(request.into_inner()).await?))
    }

    async fn retry(
        &self,
        request: Request<v1::RetryRequest>,
    ) -> Result<Response<v1::RetryResponse>, Status> {
        Ok(Response::new(self.c.retry(request.into_inner()).await?))
    }

    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        Ok(Response::new(
            self.c.drain_worker(request.into_inner()).await?,
        ))
    }
}

/// The gRPC adapter: each call hands its message to the core and maps its error.
#[tonic::async_trait]
impl Worker for WorkerApi {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        Ok(Response::new(self.c.register(request.into_inner()).await?))
    }

    async fn lease(
        &self,
        request: Request<v1::LeaseRequest>,
    ) -> Result<Response<v1::LeaseResponse>, Status> {
        Ok(Response::new(self.c.lease(request.into_inner()).await?))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        Ok(Response::new(self.c.heartbeat(request.into_inner()).await?))
    }

    async fn complete(
        &self,
        request: Request<v1::CompleteRequest>,
    ) -> Result<Response<v1::CompleteResponse>, Status> {
        Ok(Response::new(self.c.complete(request.into_inner()).await?))
    }

    async fn hand_back(
        &self,
        request: Request<v1::HandBackRequest>,
    ) -> Result<Response<v1::HandBackResponse>, Status> {
        Ok(Response::new(self.c.hand_back(request.into_inner()).await?))
    }
}
