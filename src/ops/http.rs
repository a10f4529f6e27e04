//! The health and metrics endpoint (axum on one loopback port by default).
//! It only reads: nothing here can change what vigil does.
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use super::{metrics, Observed};

pub fn router(observed: Observed) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(observed)
}

/// Serve until shutdown.
pub async fn serve(listener: TcpListener, observed: Observed, mut shutdown: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "health and metrics endpoint listening on http://{addr}/metrics");
    }
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router(observed))
        .with_graceful_shutdown(stop)
        .await
    {
        error!(error = %e, "the health and metrics endpoint failed");
    }
}

async fn readyz(State(o): State<Observed>) -> Response {
    match o.health.verdict() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
            .into_response(),
    }
}

async fn metrics_text(State(o): State<Observed>) -> Response {
    match tokio::task::spawn_blocking(move || metrics::render(&o)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the store: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
