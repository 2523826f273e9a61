//! What tells a gateway process to stop: a signal, or its parent going
//! away. [`Gateway::serve`](super::Gateway::serve) takes either as its stop
//! future; the reload signal (SIGHUP) is the reloader's.

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// A receiver that resolves when standard input reaches its end: the
/// parent that started this process with `--stop-with-parent` is gone or
/// wants it to stop. The read runs on a thread of its own, not the
/// runtime's blocking pool, so that a process stopped by a signal does not
/// wait for its input to close.
pub fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (closed, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed.send(());
    });
    receiver
}
