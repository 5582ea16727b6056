//! What every WebSocket service does the same way.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};

/// An upgrade for frames of at most `limit` bytes, holding little memory while idle: a 1 KiB
/// read buffer (it grows for a larger frame), no write buffering. Frames up to twice the
/// limit are read whole, so that the service closes an oversized one with 1009 itself;
/// beyond that the WebSocket layer refuses them.
pub fn sized(upgrade: WebSocketUpgrade, limit: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * limit)
        .max_message_size(2 * limit)
        .max_frame_size(2 * limit)
}

/// Closes a WebSocket politely: writes the close frame with `code` and `reason` (giving up
/// after `write_wait`, as a reader that stopped reading may never take it), then waits up
/// to `answer_wait` for the client's own close frame, dropping whatever else it sends.
pub async fn close(
    socket: &mut WebSocket,
    code: u16,
    reason: &'static str,
    write_wait: Duration,
    answer_wait: Duration,
) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let sent = tokio::time::timeout(write_wait, socket.send(Message::Close(Some(frame))));
    if matches!(sent.await, Ok(Ok(()))) {
        let _ = tokio::time::timeout(answer_wait, async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
