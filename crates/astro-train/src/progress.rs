//! Live progress: an indicatif bar on a terminal, plain periodic lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};

/// Reports training progress on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
}

fn format_val(val: Option<f64>) -> String {
    val.map_or("—".to_string(), |v| format!("{v:.4}"))
}

impl Progress {
    /// A bar (`terminal`) or line printer for `total` steps, starting at `start`.
    pub fn new(total: usize, start: usize, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} eta {eta}]")
                    .expect("valid template")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.set_position(start as u64);
            bar
        });
        Self { bar, total }
    }

    /// A line of text above the bar.
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Reports step `step` with its loss, the last validation loss, throughput and learning rate.
    pub fn update(&mut self, step: usize, loss: f64, val: Option<f64>, acc: Option<f64>, tokens_per_sec: f64, lr: f64) {
        let acc = acc.map_or(String::new(), |a| format!(" | acc {:.3}", a));
        let msg = format!("loss {loss:.4} | val {}{acc} | {:.0} tok/s | lr {lr:.2e}", format_val(val), tokens_per_sec);
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(msg);
            }
            None => eprintln!("step {step}/{} | {msg}", self.total),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
