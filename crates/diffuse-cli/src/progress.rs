//! Step progress on stderr: a bar on a terminal, and when stderr is a pipe or a file (a job runner, a log),
//! a plain line at most once a second and at the last step, so that a long run is seen to advance.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The longest a piped run stays silent.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Where step progress goes.
pub enum StepProgress {
    /// A terminal's bar.
    Bar(ProgressBar),
    /// Lines for a pipe or a file.
    Lines {
        /// When the run began.
        started: Instant,
        /// When the last line was written.
        last: Option<Instant>,
    },
    /// `--quiet`.
    Quiet,
}

impl StepProgress {
    /// The reporter for stderr as it is.
    pub fn new(quiet: bool) -> Self {
        if quiet {
            return Self::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Self::Lines {
                started: Instant::now(),
                last: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self::Bar(bar)
    }

    /// Step `step` of `total` is done.
    pub fn step(&mut self, step: usize, total: usize) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
            }
            Self::Lines { started, last } => {
                let now = Instant::now();
                let due = last.is_none_or(|t| now.duration_since(t) >= LINE_INTERVAL);
                if due || step == total {
                    eprintln!(
                        "step {step}/{total} ({:.1} s)",
                        now.duration_since(*started).as_secs_f64()
                    );
                    *last = Some(now);
                }
            }
            Self::Quiet => {}
        }
    }

    /// The run is over: the bar goes away.
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
