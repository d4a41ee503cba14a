//! Progress of a one-host run: on a terminal, an overall bar with counts and ETA and one line
//! per running trial (its stage and elapsed time); elsewhere, plain log lines.

use std::io::IsTerminal;
use std::time::Duration;

use hlsfarm_common::stage::Stage;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's progress display.
pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar)>,
}

/// One running trial's line.
pub struct TrialLine {
    name: String,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `n` more trials to run (derived while running).
    pub fn grow(&self, n: u64) {
        if let Some((_, overall)) = &self.bars {
            overall.inc_length(n);
        }
    }

    /// A display for `total` trials: bars on a terminal, lines otherwise.
    pub fn new(total: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} trials  {msg}  elapsed {elapsed}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.enable_steady_tick(Duration::from_millis(500));
        Progress {
            bars: Some((multi, overall)),
        }
    }

    /// Prints a line above the bars (or to stderr).
    pub fn println(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// A line for a trial that starts.
    pub fn start(&self, name: &str, attempt: u32) -> TrialLine {
        let bar = self.bars.as_ref().map(|(multi, _)| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("hlsfarm: start {name} (attempt {attempt})");
        }
        TrialLine {
            name: name.to_owned(),
            bar,
        }
    }

    /// Shows the stage a trial entered.
    pub fn stage(&self, line: &TrialLine, stage: Stage) {
        let label = match stage {
            Stage::Convert => "convert/emulate",
            other => other.as_str(),
        };
        match &line.bar {
            Some(bar) => bar.set_message(format!("{}: {label}", line.name)),
            None => eprintln!("hlsfarm: {}: {label}", line.name),
        }
    }

    /// Ends a trial's line with its outcome; `counts` is the running tally for the bar.
    pub fn finish(&self, line: TrialLine, text: &str, counts: &str) {
        if let Some(bar) = line.bar {
            bar.finish_and_clear();
        }
        self.println(text);
        if let Some((_, overall)) = &self.bars {
            overall.inc(1);
            overall.set_message(counts.to_owned());
        }
    }

    /// Sets the overall position and message (a sweep watched from afar); without a
    /// terminal, prints the message as a line.
    pub fn set(&self, position: u64, message: &str) {
        match &self.bars {
            Some((_, overall)) => {
                overall.set_position(position);
                overall.set_message(message.to_owned());
            }
            None => eprintln!("hlsfarm: {message}"),
        }
    }

    /// Removes the bars at the end.
    pub fn done(&self) {
        if let Some((_, overall)) = &self.bars {
            overall.finish_and_clear();
        }
    }
}
