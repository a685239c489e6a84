//! Forwards the program's aya-log events (debug level: each steer, pass and
//! fail-closed drop) into the agent's logs. The program writes them to a ring
//! buffer; [`BpfLogs::forward`] waits on it through tokio and flushes each
//! batch to the `log` facade, which tracing-subscriber picks up.

use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

type Logger = EbpfLogger<&'static dyn log::Log>;

/// The program's log stream; see [`super::Steering::take_logs`].
pub struct BpfLogs {
    logger: Logger,
}

impl std::fmt::Debug for BpfLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BpfLogs")
    }
}

impl BpfLogs {
    pub(super) fn new(logger: Logger) -> Self {
        Self { logger }
    }

    /// Forwards events until the task is dropped. Needs a tokio runtime.
    pub async fn forward(self) -> std::io::Result<()> {
        #[expect(unsafe_code, reason = "tokio's only non-deprecated AsyncFd constructor is unsafe")]
        // SAFETY: the logger owns its ring buffer's descriptor for its whole
        // life and `as_raw_fd` always returns that one; the AsyncFd owns the
        // logger, so the descriptor outlives the registration.
        let mut fd = unsafe { AsyncFd::register_with_interest(self.logger, Interest::READABLE) }?;
        loop {
            let mut ready = fd.readable_mut().await?;
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }
}
