//! `deploy/`: the local cluster script runs a sweep and leaves nothing behind; the Kubernetes
//! manifests pass an offline schema validator; the systemd units pass `systemd-analyze
//! verify`; the shell scripts pass shellcheck; the configs embedded in the manifests parse; the
//! Containerfiles copy what exists, install venvs that have lock files, are the images the
//! manifests name, and their entrypoint runs the binary and finds the host's Xilinx tools.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hlsfarm_tests::{TestDir, hlsfarm_bin, hlsfarm_command, run_ok, tests_dir, wait_until};

fn deploy() -> PathBuf {
    tests_dir().join("../deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                out.push(text);
            }
        }
    }
    out
}

#[test]
fn the_local_cluster_runs_a_sweep_and_leaves_no_process_behind() {
    let dir = TestDir::new("deploy-local").unwrap();
    let state = dir.join("state");
    let script = deploy().join("local-cluster.sh");
    let env = |command: &mut Command| {
        command
            .env("HLSFARM_LOCAL", &state)
            .env("HLSFARM_BIN", hlsfarm_bin().unwrap())
            .env("HLSFARM_LOCAL_STANDIN", "1")
            .current_dir(dir.path());
    };
    // Whatever happens below, the cluster goes down at the end.
    struct Down(Command);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = self.0.output();
        }
    }
    let mut down = Command::new("bash");
    down.arg(&script).arg("down");
    env(&mut down);
    let _down = Down(down);
    let mut up = Command::new("bash");
    up.arg(&script).args(["up", "1"]);
    env(&mut up);
    let out = run_ok(up).unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{printed}{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("`{name}` not printed:\n{printed}"))
    };
    let url = field("coordinator:");
    let token = field("operator token:");
    assert!(
        field("store:").starts_with("s3://"),
        "moto should be found: {printed}"
    );

    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(
        tests_dir().join("../examples/trials/model_trial_000.h5"),
        models.join("model_trial_000.h5"),
    )
    .unwrap();
    let mut submit = hlsfarm_command().unwrap();
    submit
        .env("HLSFARM_URL", &url)
        .env("HLSFARM_TOKEN", &token)
        .args(["submit", "--input-dir"])
        .arg(&models)
        .args(["--stages", "convert,emulate,csynth", "--wait"]);
    let out = run_ok(submit).unwrap_or_else(|e| {
        let logs = std::fs::read_to_string(state.join("logs/worker-1.log")).unwrap_or_default();
        panic!("{e}\nworker log:\n{logs}")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("finished: 1 succeeded"), "{stderr}");

    let mut status = Command::new("bash");
    status.arg(&script).arg("status");
    env(&mut status);
    let out = run_ok(status).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("worker-1: running"), "{text}");

    let mut down = Command::new("bash");
    down.arg(&script).arg("down");
    env(&mut down);
    run_ok(down).unwrap();
    let needle = state.display().to_string();
    wait_until("every process to end", Duration::from_secs(30), || {
        processes_mentioning(&needle).is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", processes_mentioning(&needle)));
}

#[test]
fn kubernetes_manifests_pass_the_schema_validator_and_their_configs_parse() {
    let validator = std::env::var_os("HLSFARM_KUBE_VALIDATE")
        .map(PathBuf::from)
        .expect("HLSFARM_KUBE_VALIDATE (kubernetes-validate) is unset: run `make setup`");
    let manifests = files(&deploy().join("kubernetes"), "yaml");
    assert!(manifests.len() >= 6, "{manifests:?}");
    let mut command = Command::new(&validator);
    command.arg("--strict").args(&manifests);
    let out = run_ok(command).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("ERROR") && !text.contains("FAIL"), "{text}");
    for kind in [
        "deployment/hlsfarm-coordinator",
        "statefulset/hlsfarm-redis",
        "deployment/hlsfarm-worker",
        "job/hlsfarm-workers",
        "secret/hlsfarm-worker",
        "configmap/hlsfarm-config",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind} not validated:\n{text}"
        );
    }
    // The TOML inside the ConfigMap is a valid hlsfarm config (PyYAML comes with the validator).
    let dir = TestDir::new("deploy-k8s").unwrap();
    let python = validator.with_file_name("python");
    let mut extract = Command::new(python);
    extract
        .arg("-c")
        .arg("import sys, yaml; d = yaml.safe_load(open(sys.argv[1]))['data']\nfor k, v in d.items(): open(sys.argv[2] + '/' + k, 'w').write(v)")
        .arg(deploy().join("kubernetes/20-config.yaml"))
        .arg(dir.path());
    run_ok(extract).unwrap();
    for name in ["coordinator.toml", "worker.toml"] {
        let mut dump = hlsfarm_command().unwrap();
        dump.arg("--config")
            .arg(dir.join(name))
            .arg("--dump-config");
        run_ok(dump).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("systemd-analyze is not installed here: units not verified");
        return;
    }
    let dir = TestDir::new("deploy-systemd").unwrap();
    let bin = hlsfarm_bin().unwrap();
    let mut units = Vec::new();
    for unit in files(&deploy().join("systemd"), "service") {
        // The units name the installed binary; verify them against this build's.
        let text = std::fs::read_to_string(&unit)
            .unwrap()
            .replace("/usr/local/bin/hlsfarm", &bin.display().to_string());
        let copy = dir.join(unit.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    assert_eq!(units.len(), 2);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let root = tests_dir().join("..");
    let mut command = Command::new("shellcheck");
    command.args([
        root.join("deploy/local-cluster.sh"),
        root.join("deploy/slurm/hlsfarm-workers.sbatch"),
        root.join(".ci/setup"),
        root.join(".ci/test"),
        root.join(".ci/run"),
        root.join("tests/bench/dispatch-vs-celery.sh"),
        root.join("deploy/container/entrypoint.sh"),
    ]);
    run_ok(command).unwrap_or_else(|e| panic!("shellcheck (installed by `make setup`): {e}"));
}

/// A Containerfile's instructions, continuation lines joined, comments dropped.
fn instructions(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            let (word, rest) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            out.push((word.to_uppercase(), rest.trim().to_owned()));
            current.clear();
        }
    }
    out
}

#[test]
fn container_files_build_what_the_manifests_name_and_the_entrypoint_runs_the_binary() {
    let root = tests_dir().join("..");
    let container = deploy().join("container");
    let version = env!("CARGO_PKG_VERSION");
    let mut built = Vec::new();
    for (file, image, command) in [
        ("Containerfile.coordinator", "hlsfarm-coordinator", "serve"),
        ("Containerfile.worker", "hlsfarm-worker", "worker"),
    ] {
        let path = container.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        // Its header's build command is the one the operations guide gives.
        let build = format!("build -f deploy/container/{file} -t {image}:{version} .");
        assert!(text.contains(&build), "{file} does not say `{build}`");
        let steps = instructions(&path);
        for (word, rest) in &steps {
            if word == "COPY" && !rest.starts_with("--from") {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                for source in &parts[..parts.len() - 1] {
                    if *source == "." {
                        continue;
                    }
                    assert!(
                        root.join(source).exists(),
                        "{file} copies {source}, which is not in the repository"
                    );
                }
            }
        }
        let entrypoint = steps
            .iter()
            .rfind(|(w, _)| w == "ENTRYPOINT")
            .map(|(_, r)| r.clone())
            .unwrap();
        assert_eq!(
            entrypoint, r#"["/usr/local/bin/hlsfarm-entrypoint"]"#,
            "{file}"
        );
        assert!(
            steps.iter().any(|(w, r)| w == "COPY"
                && r == "deploy/container/entrypoint.sh /usr/local/bin/hlsfarm-entrypoint"),
            "{file} does not install the entrypoint"
        );
        assert!(
            steps.iter().any(|(w, r)| w == "COPY"
                && r.starts_with("--from=build")
                && r.ends_with(" /usr/local/bin/hlsfarm")),
            "{file} does not install the binary where the entrypoint runs it"
        );
        let cmd = steps
            .iter()
            .rfind(|(w, _)| w == "CMD")
            .map(|(_, r)| r.clone());
        assert_eq!(
            cmd.as_deref(),
            Some(format!("[\"{command}\"]").as_str()),
            "{file}"
        );
        built.push(format!("{image}:{version}"));
    }
    // The worker's venvs: each format it installs has a lock file, and the Python the
    // worker is pointed at is one of them.
    let worker = std::fs::read_to_string(container.join("Containerfile.worker")).unwrap();
    let formats = worker
        .lines()
        .find_map(|l| l.strip_prefix("ARG FORMATS="))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    for format in formats.split_whitespace() {
        assert!(
            root.join(format!("worker/python/requirements-{format}.lock"))
                .is_file(),
            "no lock file for the {format} venv"
        );
        assert!(worker.contains(&format!("/opt/hlsfarm/venvs/{format}/bin/python")));
    }
    // The manifests name exactly the images built here.
    for manifest in files(&deploy().join("kubernetes"), "yaml") {
        let text = std::fs::read_to_string(&manifest).unwrap();
        for image in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
        {
            let image = image.split_whitespace().next().unwrap();
            if image.starts_with("hlsfarm") {
                assert!(
                    built.iter().any(|b| b == image),
                    "{} names {image}, which no Containerfile builds ({built:?})",
                    manifest.display()
                );
            }
        }
    }

    // The entrypoint runs the binary it is given, with the arguments it is given.
    let entrypoint = container.join("entrypoint.sh");
    let dir = TestDir::new("deploy-container").unwrap();
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let mut command = Command::new("bash");
        command
            .arg(&entrypoint)
            .args(args)
            .env("HLSFARM_BIN", hlsfarm_bin().unwrap())
            .env("XILINX_ROOT", dir.join("no-xilinx"));
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let out = run(&["--version"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("hlsfarm {version}")
    );
    for command in ["serve", "worker"] {
        let out = run(&[command, "--help"], &[]);
        assert!(out.status.success(), "{command} --help: {out:?}");
    }
    // The host's Xilinx installation: the newest settings64.sh of each tool, in both layouts.
    let xilinx = dir.join("xilinx");
    for (folder, marker) in [
        ("Vitis_HLS/2023.1", "old-hls"),
        ("Vitis_HLS/2023.2", "hls"),
        ("Vivado/2023.2", "vivado"),
        ("2025.1/Vitis", "vitis"),
    ] {
        let bin = xilinx.join(folder).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            xilinx.join(folder).join("settings64.sh"),
            format!(
                "export PATH=\"{}:$PATH\"\nexport HLSFARM_TEST_{}=1\n",
                bin.display(),
                marker.replace('-', "_").to_uppercase()
            ),
        )
        .unwrap();
    }
    let probe = dir.join("probe.sh");
    std::fs::write(&probe, "#!/bin/sh\nenv | grep '^HLSFARM_TEST_' | sort\n").unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run(&[], &[("XILINX_ROOT", &xilinx), ("HLSFARM_BIN", &probe)]);
    assert!(out.status.success(), "{out:?}");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [
            "HLSFARM_TEST_HLS=1",
            "HLSFARM_TEST_VITIS=1",
            "HLSFARM_TEST_VIVADO=1"
        ],
        "{seen}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A settings file named but missing is named in the error.
    let missing = dir.join("nowhere/settings64.sh");
    let out = run(&["--version"], &[("HLSFARM_XILINX_SETTINGS", &missing)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&missing.display().to_string()),
        "{out:?}"
    );
}
