//! Store URLs: where an object store lives, parsed once so a typo fails at start-up.

use std::path::PathBuf;

/// A parsed `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local folder (`file:///abs/path`, or a plain path).
    Local(PathBuf),
    /// An S3 bucket, with a key prefix that may be empty (`s3://bucket/prefix`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix inside it, without leading or trailing `/`.
        prefix: String,
    },
}

impl StoreUrl {
    /// Parses a store URL, or says what forms are accepted.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let forms = "use a folder path, file:///absolute/path, or s3://bucket[/prefix]";
        if url.trim().is_empty() {
            return Err(format!("is empty; {forms}"));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "`{url}`: a file:// URL needs an absolute path; {forms}"
                ));
            }
            return Ok(StoreUrl::Local(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !valid_bucket {
                return Err(format!(
                    "`{url}`: `{bucket}` is not an S3 bucket name (3 to 63 lower-case letters, digits, `-`, `.`)"
                ));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if url.contains("://") {
            return Err(format!("`{url}`: unsupported scheme; {forms}"));
        }
        Ok(StoreUrl::Local(PathBuf::from(url)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_accepted_forms_and_explains_others() {
        assert_eq!(
            StoreUrl::parse("./store").unwrap(),
            StoreUrl::Local("./store".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/h").unwrap(),
            StoreUrl::Local("/srv/h".into())
        );
        assert_eq!(
            StoreUrl::parse("s3://hls-results/team/a/").unwrap(),
            StoreUrl::S3 {
                bucket: "hls-results".into(),
                prefix: "team/a".into()
            }
        );
        assert!(
            StoreUrl::parse("s3://B")
                .unwrap_err()
                .contains("not an S3 bucket name")
        );
        assert!(
            StoreUrl::parse("gs://x")
                .unwrap_err()
                .contains("unsupported scheme")
        );
        assert!(
            StoreUrl::parse("file://rel")
                .unwrap_err()
                .contains("absolute path")
        );
    }
}
