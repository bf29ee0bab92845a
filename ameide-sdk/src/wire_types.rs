//! The types every layer and the transport speak: tonic's HTTP request and
//! response, a boxed error, a boxed future. At the bottom of the crate: every
//! module may use them, they use nothing of the crate.

use std::future::Future;
use std::pin::Pin;

/// A boxed error, the error type of every layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request type every layer handles.
pub type HttpRequest = http::Request<tonic::body::Body>;
/// The response type every layer returns.
pub type HttpResponse = http::Response<tonic::body::Body>;
/// A boxed, `Send` future (token providers return one).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
