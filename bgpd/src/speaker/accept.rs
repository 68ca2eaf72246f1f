//! The accept loop: every connection to the listener becomes an
//! [`Event::Accepted`] for the instance task, which hands it to the peer's
//! driver or refuses it.

use std::time::Duration;

use tokio::sync::mpsc;

use super::events::Event;

pub(super) async fn run(l: tokio::net::TcpListener, events: mpsc::Sender<Event>) {
    loop {
        match l.accept().await {
            Ok((stream, from)) => {
                // The bounded channel makes a flood wait in the kernel's
                // accept queue while the instance is busy.
                if events
                    .send(Event::Accepted(stream, from.ip().to_canonical()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
