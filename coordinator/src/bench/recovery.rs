//! Recovery after a lessee is killed, and duplicate leases of a live trial.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use hlsfarm_proto::v1;

use super::{Rig, beat, failed, lease_one, lease_request, model, sweep};

pub(super) async fn recovery(lease_ms: u64) -> anyhow::Result<()> {
    let lease = lease_ms.to_string();
    let heartbeat = (lease_ms / 5).max(20).to_string();
    let rig = Rig::start(&[
        ("HLSFARM_COORDINATOR__LEASE_MS", lease.as_str()),
        ("HLSFARM_COORDINATOR__HEARTBEAT_MS", heartbeat.as_str()),
    ])?;
    let mut op = rig.operator()?;
    let m = model(&mut op, "recovery").await?;
    op.submit_sweep(v1::SubmitSweepRequest {
        spec: Some(sweep(m, 2)),
    })
    .await?;
    // A lessee process takes one trial and heartbeats; SIGKILL it.
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["bench", "hold", &rig.url]);
    let mut holder = rig.spawn("lessee", command)?;
    // Its first line names the trial it holds; it ends at once if it leased nothing.
    let held = hlsfarm_rig::wait_until("the lessee to lease", Duration::from_secs(30), || {
        let out = holder.stdout();
        match out.split_once('\n') {
            Some((line, _)) => Some(line.trim().to_owned()),
            None => holder.try_status().ok().flatten().map(|_| String::new()),
        }
    })?;
    if held.is_empty() {
        bail!(
            "the lessee process leased nothing: {}",
            holder.stderr().trim()
        );
    }
    tokio::time::sleep(Duration::from_millis(lease_ms)).await;
    holder.kill();
    let killed = Instant::now();
    let mut w = rig.worker("rescuer").await?;
    let mut other: Option<v1::LeasedTrial> = None;
    let (recovered, rescued) = loop {
        // The other trial, leased while waiting, is the live one below: kept alive from its
        // lease on, or it lapses while the killed lessee's runs out, and is leased again.
        if let Some(o) = &other {
            w.heartbeat(beat("rescuer", &o.token)).await?;
        }
        let got = w
            .lease(lease_request("rescuer", 1, 1000))
            .await?
            .into_inner()
            .trials;
        match got.into_iter().next() {
            Some(t) if t.token.as_ref().is_some_and(|k| k.trial_key == held) => {
                break (killed.elapsed(), t);
            }
            Some(t) => other = Some(t),
            None => {}
        }
        if killed.elapsed() > Duration::from_millis(lease_ms * 4 + 5000) {
            bail!("the killed lessee's trial was not leased again");
        }
    };
    println!(
        "recovery: SIGKILL of a lessee -> its trial leased again after {:.2} s (lease {:.1} s; target ≤ 5 s with the default)",
        recovered.as_secs_f64(),
        lease_ms as f64 / 1000.0
    );
    w.complete(failed("rescuer", rescued.token)).await?;
    // The other trial, held live for 20 leases with heartbeats: leased exactly once.
    let t = match other {
        Some(t) => t,
        None => lease_one(&mut w, "rescuer").await?,
    };
    let until = Instant::now() + Duration::from_millis(lease_ms * 20);
    let mut second = rig.worker("second").await?;
    let mut duplicates = 0;
    while Instant::now() < until {
        w.heartbeat(beat("rescuer", &t.token)).await?;
        let got = second
            .lease(lease_request("second", 1, lease_ms / 5))
            .await?
            .into_inner()
            .trials;
        duplicates += got.len();
    }
    println!(
        "recovery: a live trial heartbeating for 20 leases ({:.0} s) was leased again {duplicates} times (target 0)",
        (lease_ms * 20) as f64 / 1000.0
    );
    Ok(())
}
