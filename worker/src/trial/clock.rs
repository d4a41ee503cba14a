//! The clock of a tool run over several stages: which stage the tool is in (from the step
//! banners `build_prj.tcl` prints), each stage's wall time, CPU time and peak memory, and
//! each stage's time limit (the worker's own, or a learned one where lower).

use std::path::PathBuf;

use hlsfarm_common::estimate::StageLimit;
use hlsfarm_common::results::StageTiming;
use hlsfarm_common::stage::Stage;

use crate::process::Sample;

/// The stage a `build_prj.tcl` step belongs to, from the line the script prints as it starts
/// the step (`***** C/RTL SYNTHESIS *****`; the `... COMPLETED IN ...` lines are not starts).
/// C simulation and validation are co-simulation's, as [`super::tool_stage::steps`] runs them.
pub(super) fn step_start(line: &str) -> Option<Stage> {
    let name = line.trim().strip_prefix("***** ")?.strip_suffix(" *****")?;
    match name {
        "C SIMULATION" | "C/RTL SIMULATION" | "C/RTL VALIDATION" => Some(Stage::Cosim),
        "C/RTL SYNTHESIS" => Some(Stage::Csynth),
        "EXPORT IP" => Some(Stage::Export),
        "VIVADO SYNTHESIS" => Some(Stage::Vsynth),
        _ => None,
    }
}

/// The clock of one tool run over several stages: reads the tool's output as it grows, moves
/// to the next stage at each step's start line, and keeps each stage's time and peak memory
/// so that every stage is held to its own limit.
pub(super) struct StageClock {
    output: PathBuf,
    read: u64,
    partial: Vec<u8>,
    pub(super) current: Stage,
    entered: std::time::Instant,
    spent: std::collections::BTreeMap<Stage, std::time::Duration>,
    peaks: std::collections::BTreeMap<Stage, u64>,
    /// CPU seconds of the stages left, and the group's CPU time when the current one began
    /// and at the last sample.
    cpu: std::collections::BTreeMap<Stage, f64>,
    cpu_entered: f64,
    cpu_now: f64,
    pub(super) limits: StageLimits,
}

/// Seconds for a message: one decimal below 10.
fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.0}")
    }
}

/// Each stage's time limit: the worker's own, or a learned one where lower.
#[derive(Debug, Clone)]
pub(super) struct StageLimits {
    /// The worker's limit of every tool stage.
    pub(super) default: std::time::Duration,
    /// Learned limits the lease carried, by stage.
    pub(super) learned: std::collections::BTreeMap<Stage, StageLimit>,
}

impl StageLimits {
    pub(super) fn new(default: std::time::Duration, learned: &[StageLimit]) -> StageLimits {
        StageLimits {
            default,
            learned: learned.iter().map(|l| (l.stage, *l)).collect(),
        }
    }

    /// The learned limit of `stage`, when it is below the worker's own.
    fn learned(&self, stage: Stage) -> Option<&StageLimit> {
        self.learned
            .get(&stage)
            .filter(|l| l.seconds.is_finite() && l.seconds > 0.0)
            .filter(|l| l.seconds < self.default.as_secs_f64())
    }

    /// The limit `stage` runs under.
    pub(super) fn of(&self, stage: Stage) -> std::time::Duration {
        self.learned(stage).map_or(self.default, |l| {
            std::time::Duration::from_secs_f64(l.seconds)
        })
    }

    /// Why `stage` was stopped at its limit, and what to do about it.
    pub(super) fn timeout(&self, stage: Stage) -> (String, String) {
        match self.learned(stage) {
            Some(l) => (
                format!(
                    "stage {stage} ran past its learned limit of {} s (the estimates expected {} s)",
                    seconds(l.seconds),
                    seconds(l.predicted_seconds)
                ),
                format!(
                    "its retry runs under the worker's limit of {} s; if such trials often run this long, raise coordinator.learned_limit_multiple (0 turns learned limits off)",
                    self.default.as_secs()
                ),
            ),
            None => (
                format!(
                    "stage {stage} ran past its limit of {} s",
                    self.default.as_secs()
                ),
                "raise the tool stage timeout, or raise reuse_factor to shrink the design".into(),
            ),
        }
    }
}

impl StageClock {
    pub(super) fn new(output: PathBuf, first: Stage, limits: StageLimits) -> StageClock {
        StageClock {
            output,
            read: 0,
            partial: Vec::new(),
            current: first,
            entered: std::time::Instant::now(),
            spent: Default::default(),
            peaks: Default::default(),
            cpu: Default::default(),
            cpu_entered: 0.0,
            cpu_now: 0.0,
            limits,
        }
    }

    /// New output read, the stage moved on where it says so, and `rss_mib` counted to the
    /// stage it is in; true when that stage has run past its limit.
    pub(super) fn tick(
        &mut self,
        sample: Sample,
        on_stage: &(dyn Fn(Stage) + Send + Sync),
    ) -> bool {
        self.cpu_now = self.cpu_now.max(sample.cpu_seconds);
        use std::io::{Read, Seek};
        if let Ok(mut file) = std::fs::File::open(&self.output)
            && file.seek(std::io::SeekFrom::Start(self.read)).is_ok()
        {
            let mut new = Vec::new();
            if let Ok(n) = file.read_to_end(&mut new) {
                self.read += n as u64;
                self.partial.extend_from_slice(&new);
            }
        }
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if let Some(stage) = step_start(&String::from_utf8_lossy(&line))
                && stage != self.current
            {
                *self.spent.entry(self.current).or_default() += self.entered.elapsed();
                *self.cpu.entry(self.current).or_default() += self.cpu_now - self.cpu_entered;
                self.cpu_entered = self.cpu_now;
                self.current = stage;
                self.entered = std::time::Instant::now();
                on_stage(stage);
            }
        }
        let peak = self.peaks.entry(self.current).or_default();
        *peak = (*peak).max(sample.rss_mib);
        self.spent_in(self.current) > self.limits.of(self.current)
    }

    fn spent_in(&self, stage: Stage) -> std::time::Duration {
        let before = self.spent.get(&stage).copied().unwrap_or_default();
        if stage == self.current {
            before + self.entered.elapsed()
        } else {
            before
        }
    }

    pub(super) fn timing(&self, stage: Stage) -> StageTiming {
        let mut cpu = self.cpu.get(&stage).copied().unwrap_or(0.0);
        if stage == self.current {
            cpu += self.cpu_now - self.cpu_entered;
        }
        StageTiming {
            stage,
            seconds: self.spent_in(stage).as_secs_f64(),
            peak_memory_mib: self.peaks.get(&stage).copied().unwrap_or(0),
            cpu_seconds: Some(cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn step_starts_are_read_from_build_prj_tcl_banners_not_their_completions() {
        assert_eq!(step_start("***** C SIMULATION *****"), Some(Stage::Cosim));
        assert_eq!(
            step_start("***** C/RTL SYNTHESIS *****\r"),
            Some(Stage::Csynth)
        );
        assert_eq!(
            step_start("***** C/RTL VALIDATION *****"),
            Some(Stage::Cosim)
        );
        assert_eq!(step_start("***** EXPORT IP *****"), Some(Stage::Export));
        assert_eq!(
            step_start("***** VIVADO SYNTHESIS *****"),
            Some(Stage::Vsynth)
        );
        assert_eq!(
            step_start("***** C/RTL SYNTHESIS COMPLETED IN 0h0m13s *****"),
            None
        );
        assert_eq!(step_start("****** Vitis HLS - High-Level Synthesis"), None);
    }

    fn rss(mib: u64) -> Sample {
        Sample {
            rss_mib: mib,
            cpu_seconds: 0.0,
        }
    }

    #[test]
    fn the_clock_moves_with_the_output_and_holds_each_stage_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let heard = std::sync::Mutex::new(Vec::new());
        let on = |s: Stage| heard.lock().unwrap().push(s);
        let mut clock = StageClock::new(
            out.clone(),
            Stage::Cosim,
            StageLimits::new(std::time::Duration::from_millis(200), &[]),
        );
        std::fs::write(&out, "start\n***** C SIMULATION *****\n***** C/RTL SYN").unwrap();
        assert!(!clock.tick(rss(10), &on));
        assert_eq!(clock.current, Stage::Cosim);
        std::fs::write(
            &out,
            "start\n***** C SIMULATION *****\n***** C/RTL SYNTHESIS *****\nmore\n",
        )
        .unwrap();
        assert!(!clock.tick(rss(50), &on));
        assert_eq!(clock.current, Stage::Csynth);
        assert_eq!(*heard.lock().unwrap(), [Stage::Csynth]);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(clock.tick(rss(20), &on), "csynth ran past its own limit");
        assert_eq!(clock.timing(Stage::Cosim).peak_memory_mib, 10);
        assert_eq!(clock.timing(Stage::Csynth).peak_memory_mib, 50);
        assert!(clock.timing(Stage::Csynth).seconds >= 0.25);
        assert!(clock.timing(Stage::Cosim).seconds < 0.2);
    }

    #[test]
    fn a_learned_limit_holds_its_stage_only_and_says_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let on = |_: Stage| {};
        let learned = StageLimit {
            stage: Stage::Cosim,
            seconds: 0.2,
            predicted_seconds: 0.05,
        };
        let too_loose = StageLimit {
            stage: Stage::Csynth,
            seconds: 1e6,
            predicted_seconds: 1e5,
        };
        let limits = StageLimits::new(std::time::Duration::from_secs(60), &[learned, too_loose]);
        assert_eq!(
            limits.of(Stage::Cosim),
            std::time::Duration::from_millis(200)
        );
        assert_eq!(
            limits.of(Stage::Csynth),
            std::time::Duration::from_secs(60),
            "never above the worker's own limit"
        );
        assert_eq!(limits.of(Stage::Export), std::time::Duration::from_secs(60));
        let (reason, fix) = limits.timeout(Stage::Cosim);
        assert!(
            reason.contains("learned limit of 0.2 s (the estimates expected 0.1 s)"),
            "{reason}"
        );
        assert!(
            fix.contains("retry runs under the worker's limit of 60 s"),
            "{fix}"
        );
        assert!(fix.contains("coordinator.learned_limit_multiple"), "{fix}");
        let (reason, _) = limits.timeout(Stage::Csynth);
        assert_eq!(reason, "stage csynth ran past its limit of 60 s");
        let mut clock = StageClock::new(out.clone(), Stage::Csynth, limits);
        std::fs::write(&out, "***** C/RTL SYNTHESIS *****\n").unwrap();
        assert!(!clock.tick(rss(1), &on));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(
            !clock.tick(rss(1), &on),
            "csynth is held to the worker's limit"
        );
        std::fs::write(
            &out,
            "***** C/RTL SYNTHESIS *****\n***** C/RTL SIMULATION *****\n",
        )
        .unwrap();
        assert!(!clock.tick(rss(1), &on));
        assert_eq!(clock.current, Stage::Cosim);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(clock.tick(rss(1), &on), "cosim ran past its learned limit");
    }
}
