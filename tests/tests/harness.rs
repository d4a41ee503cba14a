//! The harness starts what later tests stand on: redis-server with and without AOF, the
//! S3-compatible server with a bucket, and the hlsfarm binary with layered config.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hlsfarm_tests::{RedisOptions, RedisServer, S3Server, TestDir, hlsfarm_command, run_ok};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, path::Path as StorePath};

#[test]
fn redis_without_aof_starts_and_answers() {
    let dir = TestDir::new("redis").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    assert_eq!(redis.command(&["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(
        redis.command(&["CONFIG", "GET", "appendonly"]).unwrap(),
        "*2"
    );
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}

#[test]
fn redis_with_aof_keeps_writes_across_a_clean_restart() {
    let dir = TestDir::new("redis-aof").unwrap();
    let mut redis = RedisServer::start(dir.path(), RedisOptions { aof: true }).unwrap();
    assert_eq!(redis.command(&["INCR", "counter"]).unwrap(), ":1");
    redis.restart().unwrap();
    assert_eq!(redis.command(&["INCR", "counter"]).unwrap(), ":2");
    assert!(
        dir.join("appendonlydir").is_dir() || dir.join("appendonly.aof").is_file(),
        "no AOF written in {}",
        dir.path().display()
    );
}

#[test]
fn redis_without_aof_loses_writes_on_restart() {
    // The control for the test above: the restart really starts an empty server.
    let dir = TestDir::new("redis-noaof").unwrap();
    let mut redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    assert_eq!(redis.command(&["INCR", "counter"]).unwrap(), ":1");
    redis.restart().unwrap();
    assert_eq!(redis.command(&["INCR", "counter"]).unwrap(), ":1");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_server_serves_object_store_with_conditional_puts() {
    let dir = TestDir::new("s3").unwrap();
    let s3 = tokio::task::spawn_blocking({
        let path = dir.path().to_owned();
        move || S3Server::start(&path, "hlsfarm-test")
    })
    .await
    .unwrap()
    .unwrap();
    let store = AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_bucket_name(s3.bucket())
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let key = StorePath::from("results/abc/result.json");
    store
        .put(&key, PutPayload::from_static(b"{\"status\":\"success\"}"))
        .await
        .unwrap();
    let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[..], b"{\"status\":\"success\"}");
    // A second create-only put must be refused: fenced commits rely on it.
    let again = store
        .put_opts(
            &key,
            PutPayload::from_static(b"other"),
            PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
}

#[test]
fn hlsfarm_binary_layers_config_and_rejects_a_typo() {
    let dir = TestDir::new("cli").unwrap();
    std::fs::write(
        dir.join("hlsfarm.toml"),
        "[coordinator]\nlease_ms = 8000\nkey_prefix = \"from-file\"\n",
    )
    .unwrap();
    let mut command = hlsfarm_command().unwrap();
    command
        .current_dir(dir.path())
        .args([
            "--config",
            "hlsfarm.toml",
            "--dump-config",
            "--log-format",
            "json",
        ])
        .env("HLSFARM_COORDINATOR__KEY_PREFIX", "from-env")
        .env(
            "HLSFARM_COORDINATOR__REDIS_URL",
            "redis://:hunter2@db:6379/0",
        );
    let output = run_ok(command).unwrap();
    let dumped = String::from_utf8(output.stdout).unwrap();
    assert!(dumped.contains("lease_ms = 8000"), "{dumped}");
    assert!(dumped.contains("key_prefix = \"from-env\""), "{dumped}");
    assert!(dumped.contains("format = \"json\""), "{dumped}");
    assert!(!dumped.contains("hunter2"), "secret printed: {dumped}");

    std::fs::write(dir.join("typo.toml"), "[coordinator]\nleese_ms = 8000\n").unwrap();
    let mut command = hlsfarm_command().unwrap();
    command
        .current_dir(dir.path())
        .args(["--config", "typo.toml", "--dump-config"]);
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("leese_ms"), "{stderr}");
    assert!(stderr.contains("typo.toml"), "{stderr}");
}

#[test]
fn wait_until_times_out_naming_what_it_waited_for() {
    let err =
        hlsfarm_tests::wait_until("the sky to fall", Duration::from_millis(50), || None::<()>)
            .unwrap_err();
    assert!(err.to_string().contains("the sky to fall"), "{err}");
}
