//! Shutdown as a drain signal (after ztunnel's `drain.rs`): one [`Trigger`]
//! held by whoever decides to stop, any number of [`Watch`]es held by the
//! loops that must stop accepting and finish what they have.

use tokio::sync::watch;

/// Signals every [`Watch`] made from it; dropping it signals too, so a
/// listener never outlives the thing that owns it.
pub struct Trigger(watch::Sender<bool>);

#[derive(Clone)]
pub struct Watch(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Watch(rx))
}

impl Trigger {
    pub fn signal(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.signal();
    }
}

impl Watch {
    /// Resolves once the trigger has signalled (or is gone).
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
