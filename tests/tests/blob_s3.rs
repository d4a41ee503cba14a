//! The object store on a real S3-compatible server: checked uploads, the accepted attempt's
//! commit (one copy, earlier attempts collected), retries with backoff through an outage, and
//! a bounded retry budget.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hlsfarm_common::blob::{Blobs, Error, RetryBudget};
use hlsfarm_common::job::Fence;
use hlsfarm_tests::{S3Server, TestDir};

async fn server(dir: &TestDir) -> S3Server {
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || S3Server::start(&path, "hlsfarm-results"))
        .await
        .unwrap()
        .unwrap()
}

fn blobs(s3: &S3Server) -> Blobs {
    s3.blobs("cluster-a").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_checked_and_the_accepted_attempt_commits_with_one_copy() {
    let dir = TestDir::new("s3-commit").unwrap();
    let s3 = server(&dir).await;
    let blobs = blobs(&s3);
    let key = "cd".repeat(32);
    let (winner, loser) = (
        Fence {
            attempt: 2,
            epoch: 0,
        },
        Fence {
            attempt: 1,
            epoch: 0,
        },
    );
    let tarball: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    for fence in [winner, loser] {
        let prefix = Blobs::attempt_prefix(&key, fence);
        let sha = blobs
            .put_checked(
                &format!("{prefix}/artifacts.tar.gz"),
                tarball.clone(),
                RetryBudget::default(),
            )
            .await
            .unwrap();
        assert_eq!(sha.len(), 64);
        blobs
            .put_checked(
                &format!("{prefix}/result.json"),
                format!("{{\"attempt\":{}}}", fence.attempt).into_bytes(),
                RetryBudget::default(),
            )
            .await
            .unwrap();
    }
    // Redis accepted attempt 2: its commit copies its result.json and collects attempt 1.
    let winner_prefix = Blobs::attempt_prefix(&key, winner);
    assert_eq!(blobs.commit_attempt(&winner_prefix, &key).await.unwrap(), 2);
    let result = blobs
        .get(&format!("{}/result.json", Blobs::result_prefix(&key)))
        .await
        .unwrap();
    assert_eq!(result, b"{\"attempt\":2}");
    let stored = blobs
        .get(&Blobs::artifact_path(
            &key,
            &winner_prefix,
            "artifacts.tar.gz",
        ))
        .await
        .unwrap();
    assert_eq!(stored, tarball);
    let left: Vec<String> = blobs
        .list_sizes(&format!("{}/attempts", Blobs::result_prefix(&key)))
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        left,
        ["2-0/artifacts.tar.gz", "2-0/result.json"],
        "{left:?}"
    );
    // Committing again (a coordinator that died before releasing the claim) changes nothing.
    blobs.commit_attempt(&winner_prefix, &key).await.unwrap();
    assert_eq!(
        blobs
            .get(&format!("{}/result.json", Blobs::result_prefix(&key)))
            .await
            .unwrap(),
        b"{\"attempt\":2}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_rides_out_an_outage_and_gives_up_past_its_budget() {
    let dir = TestDir::new("s3-outage").unwrap();
    let mut s3 = server(&dir).await;
    let blobs = blobs(&s3);
    s3.stop();

    // Down past the budget: a clear store error, after retrying.
    let start = std::time::Instant::now();
    let budget = RetryBudget {
        max_elapsed: Duration::from_secs(2),
        initial: Duration::from_millis(100),
    };
    let err = blobs
        .put_checked("staging/x/1-0/result.json", b"{}".to_vec(), budget)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err:?}");
    // It retried for about its budget (backoff stops when the next wait would pass the
    // budget, so a little less is normal), then gave up.
    let spent = start.elapsed();
    assert!(
        spent >= Duration::from_secs(1) && spent < Duration::from_secs(20),
        "gave up after {spent:?} with a 2 s budget"
    );

    // Down for a moment: the upload retries until the store is back.
    let budget = RetryBudget {
        max_elapsed: Duration::from_secs(60),
        initial: Duration::from_millis(100),
    };
    let upload = tokio::spawn({
        let blobs = blobs.clone();
        async move {
            blobs
                .put_checked(
                    "staging/y/1-0/result.json",
                    b"{\"ok\":true}".to_vec(),
                    budget,
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!upload.is_finished(), "the upload should still be retrying");
    let s3 = tokio::task::spawn_blocking(move || {
        s3.restart().unwrap();
        s3
    })
    .await
    .unwrap();
    upload.await.unwrap().unwrap();
    assert_eq!(
        blobs.get("staging/y/1-0/result.json").await.unwrap(),
        b"{\"ok\":true}"
    );
    drop(s3);
}
