//! A client stream the test feeds one message at a time.

/// Sends what arrives on its channel; ends when the sender is dropped.
pub struct Feed<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> tokio_stream::Stream for Feed<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
