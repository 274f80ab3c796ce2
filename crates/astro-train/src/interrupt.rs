//! Stopping a run cleanly on a signal. SIGTERM (a preemption, `kill`, Slurm at a time limit),
//! SIGINT (Ctrl-C) and SIGUSR1 (what Slurm's `--signal=B:USR1@N` sends N seconds before a time
//! limit) ask the training loop to finish its current step, write a checkpoint and stop: the run
//! directory's `status.json` then says `interrupted`, and `--resume` continues it exactly.
//!
//! A second Ctrl-C exits at once (status 130), for a person who does not want to wait for the step.
//! A second SIGTERM or SIGUSR1 changes nothing: schedulers send SIGTERM to every process of a job
//! and forwarding scripts may pass one on again, and neither should cost the checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Exit status of a command that stopped on a signal after saving its work: 75 (`EX_TEMPFAIL`,
/// "try again later"). Distinct from 1 (an error) and from 128 + N (killed by signal N).
pub const EXIT_INTERRUPTED: u8 = 75;

/// A signal that stops a run cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM.
    Term,
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGUSR1 (Slurm's warning before a time limit).
    Usr1,
}

impl StopSignal {
    /// The signal's name, `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Usr1 => "SIGUSR1",
        }
    }

    fn code(self) -> usize {
        match self {
            StopSignal::Term => 1,
            StopSignal::Int => 2,
            StopSignal::Usr1 => 3,
        }
    }

    fn from_code(code: usize) -> Option<StopSignal> {
        match code {
            1 => Some(StopSignal::Term),
            2 => Some(StopSignal::Int),
            3 => Some(StopSignal::Usr1),
            _ => None,
        }
    }
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The flag the training loop reads after every step: which stop signal arrived, if any.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    received: Arc<AtomicUsize>,
}

impl Interrupt {
    /// A flag that only [`Interrupt::raise`] sets (library use, tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// Installs the process's handlers for SIGTERM, SIGINT and SIGUSR1 (call once, from `main`):
    /// each sets the returned flag; a second SIGINT exits at once with status 130.
    #[cfg(unix)]
    pub fn install() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        use signal_hook::flag;
        let interrupt = Self::default();
        let ctrl_c = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Registered before the flag that arms it, so the first SIGINT only arms it.
        flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&ctrl_c))?;
        flag::register(SIGINT, ctrl_c)?;
        for (signal, stop) in [(SIGTERM, StopSignal::Term), (SIGINT, StopSignal::Int), (SIGUSR1, StopSignal::Usr1)] {
            flag::register_usize(signal, Arc::clone(&interrupt.received), stop.code())?;
        }
        Ok(interrupt)
    }

    /// Without Unix signals: a flag nothing sets.
    #[cfg(not(unix))]
    pub fn install() -> std::io::Result<Self> {
        Ok(Self::default())
    }

    /// The stop signal received so far, if any.
    pub fn received(&self) -> Option<StopSignal> {
        StopSignal::from_code(self.received.load(Ordering::SeqCst))
    }

    /// Sets the flag as if `signal` had arrived.
    pub fn raise(&self, signal: StopSignal) {
        self.received.store(signal.code(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_signal_is_seen_by_every_clone() {
        let flag = Interrupt::none();
        let seen = flag.clone();
        assert_eq!(seen.received(), None);
        flag.raise(StopSignal::Usr1);
        assert_eq!(seen.received(), Some(StopSignal::Usr1));
        assert_eq!(seen.received().unwrap().to_string(), "SIGUSR1");
    }
}
