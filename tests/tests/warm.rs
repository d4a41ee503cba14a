//! Warm interpreters (`worker::warm`): trials run through a fork server keep the isolation of
//! a process per trial. A crash or a hang in one trial leaves the server serving the next,
//! cancel and the time limit kill exactly that trial's process, and a server that died is
//! replaced. Real hls4ml conversions of PyTorch models made here.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::settings::Settings;
use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_tests::{TestDir, format_python, processes_under, run_ok, tests_dir};
use hlsfarm_worker::driver::{Converted, DriverEnv, Job, ModelFiles, StageFailure, convert};
use hlsfarm_worker::warm::WarmPool;
use tokio_util::sync::CancellationToken;

fn env(pool: &Arc<WarmPool>, timeout: Duration) -> DriverEnv {
    DriverEnv {
        python: hlsfarm_tests::hls4ml_python().unwrap(),
        by_format: hlsfarm_worker::venv::format_pythons(),
        timeout,
        memory_limit_mib: Some(8192),
        tolerance: Default::default(),
        strict: false,
        warm: Some(pool.clone()),
    }
}

async fn run(
    env: &DriverEnv,
    model: &ModelFiles,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<Converted, StageFailure> {
    let emulation = EmulationSpec {
        samples: 20,
        seed: 7,
    };
    let settings = Settings::default();
    let job = Job {
        model,
        settings: &settings,
        emulate: false,
        emulation: &emulation,
        inputs: None,
        validation: None,
        work_dir: dir,
        project_name: "myproject",
    };
    convert(env, &job, cancel).await
}

/// The trial's log: what the driver (warm or cold) wrote.
fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(hlsfarm_worker::driver::LOG_FILE)).unwrap_or_default()
}

fn assert_warm(dir: &Path, server: u32) {
    let log = log(dir);
    assert!(
        log.contains(&format!(
            "forked from the warm pytorch interpreter (pid {server})"
        )),
        "the trial in {} did not run in the warm interpreter {server}:\n{log}",
        dir.display()
    );
}

/// The models: the generated CNN, and two of its class files made to segfault or hang when
/// the driver imports them.
fn models(dir: &Path) -> (ModelFiles, ModelFiles, ModelFiles) {
    let gen_dir = dir.join("gen");
    let mut make = Command::new(format_python("pytorch").unwrap());
    make.arg(tests_dir().join("python/make_torch_model.py"))
        .arg(&gen_dir);
    run_ok(make).unwrap();
    let source = std::fs::read_to_string(gen_dir.join("tiny_cnn.py")).unwrap();
    let variant = |name: &str, first_line: &str| {
        let class_file = gen_dir.join(format!("{name}.py"));
        std::fs::write(&class_file, format!("{first_line}\n{source}")).unwrap();
        ModelFiles {
            class_file: Some(class_file),
            ..ModelFiles::auto(gen_dir.join("tiny_cnn.pt"))
        }
    };
    (
        ModelFiles {
            class_file: Some(gen_dir.join("tiny_cnn.py")),
            ..ModelFiles::auto(gen_dir.join("tiny_cnn.pt"))
        },
        variant("crash", "import ctypes; ctypes.string_at(0)"),
        variant("hang", "import time; time.sleep(3600)"),
    )
}

/// Waits (a few seconds at most) until no process runs in `dir`: a killed child is gone once
/// the kernel has torn it down and the server has reaped it.
fn gone(dir: &Path) {
    hlsfarm_tests::wait_until(
        "the killed trial's processes to end",
        Duration::from_secs(10),
        || processes_under(dir).is_empty().then_some(()),
    )
    .unwrap();
}

fn pytorch_python() -> PathBuf {
    let env = DriverEnv {
        python: hlsfarm_tests::hls4ml_python().unwrap(),
        by_format: hlsfarm_worker::venv::format_pythons(),
        timeout: Duration::ZERO,
        memory_limit_mib: None,
        tolerance: Default::default(),
        strict: false,
        warm: None,
    };
    env.by_format.get("pytorch").unwrap_or(&env.python).clone()
}

/// A pool whose PyTorch interpreter has converted one good trial (in `first`), warm.
struct Started {
    dir: TestDir,
    good: ModelFiles,
    crash: ModelFiles,
    hang: ModelFiles,
    pool: Arc<WarmPool>,
    env: DriverEnv,
    python: PathBuf,
    server: u32,
}

async fn started(name: &str) -> Started {
    let dir = TestDir::new(name).unwrap();
    let (good, crash, hang) = models(dir.path());
    let pool = Arc::new(WarmPool::new().unwrap());
    let env = env(&pool, Duration::from_secs(600));
    let python = pytorch_python();
    run(&env, &good, &dir.join("first"), &CancellationToken::new())
        .await
        .unwrap();
    let server = pool.server_pid(&python, "pytorch").await.unwrap();
    assert_warm(&dir.join("first"), server);
    Started {
        dir,
        good,
        crash,
        hang,
        pool,
        env,
        python,
        server,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_or_hang_leaves_the_warm_interpreter_serving_the_next_trial() {
    let s = started("warm-isolation").await;
    let never = CancellationToken::new();

    // A segfault in the trial's child: the trial fails, the server does not notice.
    let crashed = run(&s.env, &s.crash, &s.dir.join("crash"), &never)
        .await
        .unwrap_err();
    assert_warm(&s.dir.join("crash"), s.server);
    assert!(
        crashed.reason.contains("signal") || crashed.reason.contains("SIGSEGV"),
        "{crashed:?}\n{}",
        log(&s.dir.join("crash"))
    );

    // A hang, cancelled while a good trial runs beside it: exactly the hung trial's process
    // goes; the good one finishes in the same server.
    let cancel = CancellationToken::new();
    let hung = {
        let (env, hang, dir, cancel) = (
            s.env.clone(),
            s.hang.clone(),
            s.dir.join("hang"),
            cancel.clone(),
        );
        tokio::spawn(async move { run(&env, &hang, &dir, &cancel).await })
    };
    hlsfarm_tests::wait_until("the hung trial to start", Duration::from_secs(60), || {
        log(&s.dir.join("hang"))
            .contains("forked from the warm")
            .then_some(())
    })
    .unwrap();
    let beside_dir = s.dir.join("beside");
    let beside = run(&s.env, &s.good, &beside_dir, &never);
    let cancel_soon = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !processes_under(&s.dir.join("hang")).is_empty(),
            "the hung trial runs"
        );
        cancel.cancel();
    };
    let (beside, ()) = tokio::join!(beside, cancel_soon);
    beside.unwrap();
    assert_warm(&s.dir.join("beside"), s.server);
    let hung = hung.await.unwrap().unwrap_err();
    assert_eq!(hung.class, FailureClass::Infrastructure, "{hung:?}");
    assert!(hung.reason.contains("cancelled"), "{hung:?}");
    gone(&s.dir.join("hang"));

    // The time limit kills a hung child the same way.
    let limited = DriverEnv {
        timeout: Duration::from_secs(5),
        ..s.env.clone()
    };
    let start = Instant::now();
    let timed_out = run(&limited, &s.hang, &s.dir.join("hang-limit"), &never)
        .await
        .unwrap_err();
    assert_eq!(timed_out.class, FailureClass::Timeout, "{timed_out:?}");
    assert!(start.elapsed() < Duration::from_secs(60));
    gone(&s.dir.join("hang-limit"));

    // After all that, the same server converts the next trial.
    run(&s.env, &s.good, &s.dir.join("last"), &never)
        .await
        .unwrap();
    assert_warm(&s.dir.join("last"), s.server);
    assert_eq!(
        s.pool.server_pid(&s.python, "pytorch").await,
        Some(s.server)
    );
    assert_eq!(s.pool.servers_started(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_interpreter_that_died_is_replaced() {
    let s = started("warm-replaced").await;
    let never = CancellationToken::new();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    hlsfarm_tests::wait_until("the killed server to end", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{}/status", s.server)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", s.server))
                .is_ok_and(|s| s.contains(") Z")))
        .then_some(())
    })
    .unwrap();

    run(&s.env, &s.good, &s.dir.join("second"), &never)
        .await
        .unwrap();
    let replaced = s.pool.server_pid(&s.python, "pytorch").await.unwrap();
    assert_ne!(replaced, s.server);
    assert_warm(&s.dir.join("second"), replaced);
    assert_eq!(s.pool.servers_started(), 2);
}

/// The QKeras functions autograph rewrites on a first model load are rewritten by the Keras
/// interpreter before it opens its socket, so the first trial, forked at once, does not pay
/// them itself (each child names in `<socket>.learned` the functions it had to rewrite).
#[tokio::test(flavor = "multi_thread")]
async fn the_first_qkeras_trial_finds_the_common_rewrites_done() {
    let dir = TestDir::new("warm-autograph-first").unwrap();
    let gen_dir = dir.join("gen");
    let mut make = Command::new(hlsfarm_tests::hls4ml_python().unwrap());
    make.arg(tests_dir().join("python/make_keras_models.py"))
        .arg(&gen_dir)
        .arg("four_input");
    run_ok(make).unwrap();
    let pool = Arc::new(WarmPool::new().unwrap());
    let env = env(&pool, Duration::from_secs(600));
    let warm = pool
        .warm(&env.python, "keras", &CancellationToken::new())
        .await
        .unwrap();
    let model = ModelFiles::auto(gen_dir.join("four_input.h5"));
    run(&env, &model, &dir.join("first"), &CancellationToken::new())
        .await
        .unwrap();
    let server = pool.server_pid(&env.python, "keras").await.unwrap();
    let log = log(&dir.join("first"));
    assert!(
        log.contains(&format!(
            "forked from the warm keras interpreter (pid {server})"
        )),
        "{log}"
    );
    let mut learned = warm.socket.into_os_string();
    learned.push(".learned");
    let learned = std::fs::read_to_string(&learned).unwrap_or_default();
    for common in [
        "qkeras.quantizers:quantized_bits.__call__",
        "qkeras.qlayers:QDense.call",
        "qkeras.quantizers:quantized_relu.__call__",
    ] {
        assert!(
            !learned.lines().any(|l| l == common),
            "the first trial rewrote {common} itself:\n{learned}"
        );
    }
}
