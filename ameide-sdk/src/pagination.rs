//! Page and item streams for every paginated method of the bundle.
//!
//! Which methods page is read from the descriptors at build time (see
//! [`ameide_proto::pagination`]): a unary method whose request carries
//! `PaginationRequest pagination` and whose response carries
//! `PaginationResponse pagination` plus one repeated field. For each, the
//! build generates two methods on the typed client, in a `<Service>Pages`
//! trait of this module:
//!
//! - `<method>_pages(request)`: a [`Pages`] stream of whole responses,
//!   following `next_page_token` from the request's own token until it comes
//!   back empty;
//! - `<method>_items(request)`: an [`Items`] stream of the repeated field's
//!   items of every page, in order.
//!
//! | Question | Answer |
//! |---|---|
//! | Each page? | a call through the whole stack: its own request id, deadline, retries, span |
//! | Page size? | the request's, kept on every page (only the token changes) |
//! | Options? | [`Pages::options`]: a timeout, headers and so on for every page; a request id `id` is sent as `id` on the first page and `id-page-N` on page N |
//! | Lazy? | nothing is sent until the stream is polled; the next page is asked for when the stream is polled past the current one |
//! | An error? | the stream yields it as an [`Error`] and ends; [`Pages::resume_token`] (or [`Items::resume_token`]) is the token to start a new stream from |
//! | A server that repeats a token? | the stream ends with `INTERNAL` ("sent next_page_token … a second time") instead of looping forever |
//! | A server that sends new tokens forever? | at most [`Pages::max_pages`] pages (default 10,000: `RESOURCE_EXHAUSTED`) and at most [`Pages::max_empty_pages`] empty pages in a row (default 100: `INTERNAL`); both errors name the token to resume from, and are not retryable |
//! | Resume later? | [`Pages::resume_token`]: the next page's token while there is one (after an error, the failed page's); set it as the request's `page_token` to go on. For [`Items`], the token of the page whose items are being handed out, so a resumed stream may repeat some of them, never skip one |
//!
//! ```
//! # #[cfg(not(feature = "testkit"))] fn main() {}
//! # #[cfg(feature = "testkit")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> ameide_sdk::Result<()> {
//! use ameide_sdk::pagination::GraphServicePages;
//! use ameide_sdk::proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse, Repository};
//! use ameide_sdk::proto::common::v1::PaginationResponse;
//! use ameide_sdk::testkit::{MockServer, Reply};
//! use tokio_stream::StreamExt;
//!
//! // A server with two pages: "a", "b", then "c".
//! let page = |ids: &[&str], next: &str| ListRepositoriesResponse {
//!     repositories: ids.iter().map(|id| Repository { repository_id: id.to_string(), ..Default::default() }).collect(),
//!     pagination: Some(PaginationResponse { next_page_token: next.into(), total_size: 3 }),
//! };
//! let server = MockServer::new();
//! let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
//! server.push(path, Reply::message(&page(&["a", "b"], "p2")));
//! server.push(path, Reply::message(&page(&["c"], "")));
//! let client = ameide_sdk::AmeideClient::builder()
//!     .endpoint("http://mock.test:9000")
//!     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
//!     .build()?;
//!
//! let items: Vec<Repository> = client
//!     .graph()
//!     .list_repositories_items(ListRepositoriesRequest::default())
//!     .collect::<Result<_, _>>()
//!     .await?;
//! let ids: Vec<_> = items.iter().map(|r| r.repository_id.as_str()).collect();
//! assert_eq!(ids, ["a", "b", "c"]);
//! assert_eq!(server.attempts().len(), 2, "one call per page");
//! # Ok(()) }
//! ```

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tonic::Status;

use crate::call::CallOptions;
use crate::client::AmeideChannel;
use crate::error::Error;
use crate::wire_types::BoxFuture;

pub use ameide_proto::pagination::{PAGINATED, PagedRequest, PagedResponse, PaginatedMethod};

type PageFuture<R> = BoxFuture<'static, Result<tonic::Response<R>, Status>>;
type Fetch<R> =
    Box<dyn FnMut(String, &CallOptions) -> Result<PageFuture<R>, crate::ConfigError> + Send>;

enum Next {
    /// Ask for the page of this token.
    Page(String),
    /// The server sent this token before: end with an error.
    Loop(String),
    /// A cap was reached: end with this error.
    Capped(Error),
    Done,
}

/// The pages of a paginated method, each a whole response (see the
/// [module docs](self)). A `Stream` of `Result<Response, Error>`.
///
/// ```
/// # #[cfg(not(feature = "testkit"))] fn main() {}
/// # #[cfg(feature = "testkit")]
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::pagination::GraphServicePages;
/// use ameide_sdk::proto::common::v1::PaginationResponse;
/// use ameide_sdk::proto::graph::v1::ListRepositoriesResponse;
/// use ameide_sdk::testkit::{MockServer, Reply};
/// use tokio_stream::StreamExt;
///
/// let server = MockServer::new();
/// let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
/// let page = |next: &str| ListRepositoriesResponse {
///     pagination: Some(PaginationResponse { next_page_token: next.into(), total_size: 0 }),
///     ..Default::default()
/// };
/// server.push(path, Reply::message(&page("p2")));
/// server.push(path, Reply::message(&page("")));
/// let client = ameide_sdk::AmeideClient::builder()
///     .endpoint("http://mock.test:9000")
///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
///     .build()
///     .unwrap();
/// let pages: Vec<_> = client
///     .graph()
///     .list_repositories_pages(Default::default())
///     .options(ameide_sdk::CallOptions::new().request_id("listing"))
///     .collect()
///     .await;
/// assert_eq!(pages.len(), 2);
/// let ids: Vec<_> = server.attempts().iter().map(|a| a.header("x-request-id").unwrap().to_owned()).collect();
/// assert_eq!(ids, ["listing", "listing-page-2"]);
/// # }
/// ```
pub struct Pages<R> {
    fetch: Fetch<R>,
    options: CallOptions,
    in_flight: Option<PageFuture<R>>,
    next: Next,
    /// Hashes of every token followed (a repeat means a loop).
    seen: std::collections::HashSet<u64>,
    hasher: RandomState,
    /// Pages asked for so far.
    asked: u32,
    /// The token of the page asked for last (the first page's is the request's).
    current: String,
    /// The token to resume from: the next page's, or the failed page's.
    resume: Option<String>,
    max_pages: u32,
    max_empty_pages: u32,
    /// Empty pages with a next token, in a row.
    empty_run: u32,
    /// The request id of the last page received (for loop and cap errors).
    last_request_id: Option<std::sync::Arc<str>>,
}

/// Default [`Pages::max_pages`].
///
/// ```
/// assert_eq!(ameide_sdk::pagination::DEFAULT_MAX_PAGES, 10_000);
/// ```
pub const DEFAULT_MAX_PAGES: u32 = 10_000;
/// Default [`Pages::max_empty_pages`].
///
/// ```
/// assert_eq!(ameide_sdk::pagination::DEFAULT_MAX_EMPTY_PAGES, 100);
/// ```
pub const DEFAULT_MAX_EMPTY_PAGES: u32 = 100;

impl<R> fmt::Debug for Pages<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("options", &self.options)
            .field("pages_asked", &self.asked)
            .finish_non_exhaustive()
    }
}

impl<R: PagedResponse + Send + 'static> Pages<R> {
    /// The pages of `request`, each asked for with `call(client.clone(),
    /// page_request)`: what the generated `<method>_pages` use, open for a
    /// client of your own (a dynamic one, a wrapper with extra steps) whose
    /// request and response types implement [`PagedRequest`] and
    /// [`PagedResponse`]. All the rules of the module table hold.
    ///
    /// ```
    /// # #[cfg(not(feature = "testkit"))] fn main() {}
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::pagination::Pages;
    /// use ameide_sdk::proto::common::v1::PaginationResponse;
    /// use ameide_sdk::proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse};
    /// use ameide_sdk::testkit::{MockServer, Reply};
    /// use tokio_stream::StreamExt;
    ///
    /// let server = MockServer::new();
    /// let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
    /// server.push(path, Reply::message(&ListRepositoriesResponse {
    ///     pagination: Some(PaginationResponse { next_page_token: "p2".into(), total_size: 0 }),
    ///     ..Default::default()
    /// }));
    /// server.push(path, Reply::message(&ListRepositoriesResponse::default()));
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://mock.test:9000")
    ///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
    ///     .build()
    ///     .unwrap();
    /// let pages = Pages::new(ListRepositoriesRequest::default(), client, |client, request| async move {
    ///     client.graph().list_repositories(request).await
    /// });
    /// assert_eq!(pages.collect::<Vec<_>>().await.len(), 2);
    /// assert_eq!(server.attempts().len(), 2);
    /// # }
    /// ```
    pub fn new<Req, C, F, Fut>(request: Req, client: C, call: F) -> Self
    where
        Req: PagedRequest + Clone + Send + 'static,
        C: Clone + Send + 'static,
        F: Fn(C, tonic::Request<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
    {
        let first = request.page_token().to_owned();
        let resume = Some(first.clone());
        let hasher = RandomState::new();
        let mut seen = std::collections::HashSet::new();
        if !first.is_empty() {
            seen.insert(hasher.hash_one(&first));
        }
        let fetch: Fetch<R> = Box::new(move |token: String, options: &CallOptions| {
            let mut message = request.clone();
            message.set_page_token(token);
            let request = options.into_request(message)?;
            Ok(Box::pin(call(client.clone(), request)) as PageFuture<R>)
        });
        Pages {
            fetch,
            options: CallOptions::new(),
            in_flight: None,
            next: Next::Page(first),
            seen,
            hasher,
            asked: 0,
            current: String::new(),
            resume,
            max_pages: DEFAULT_MAX_PAGES,
            max_empty_pages: DEFAULT_MAX_EMPTY_PAGES,
            empty_run: 0,
            last_request_id: None,
        }
    }

    /// The most pages one stream asks for (default [`DEFAULT_MAX_PAGES`]);
    /// past it the stream ends with `RESOURCE_EXHAUSTED` naming the token to
    /// resume from. At least 1.
    ///
    /// ```
    /// # #[cfg(not(feature = "testkit"))] fn main() {}
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::pagination::GraphServicePages;
    /// use ameide_sdk::proto::common::v1::PaginationResponse;
    /// use ameide_sdk::proto::graph::v1::ListRepositoriesResponse;
    /// use ameide_sdk::testkit::{MockServer, Reply};
    /// use tokio_stream::StreamExt;
    ///
    /// let server = MockServer::new();
    /// server.fallback(Reply::message(&ListRepositoriesResponse {
    ///     pagination: Some(PaginationResponse { next_page_token: "more".into(), total_size: 0 }),
    ///     ..Default::default()
    /// }));
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://mock.test:9000")
    ///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
    ///     .build()
    ///     .unwrap();
    /// let mut pages = client.graph().list_repositories_pages(Default::default()).max_pages(1);
    /// assert!(pages.next().await.unwrap().is_ok());
    /// let err = pages.next().await.unwrap().unwrap_err();
    /// assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    /// assert_eq!(pages.resume_token(), Some("more"));
    /// # }
    /// ```
    pub fn max_pages(mut self, pages: u32) -> Self {
        self.max_pages = pages.max(1);
        self
    }

    /// The most empty pages in a row that still carry a next token (default
    /// [`DEFAULT_MAX_EMPTY_PAGES`]): a server that pages through nothing
    /// forever ends the stream with `INTERNAL` naming the token. At least 1.
    ///
    /// ```
    /// # #[cfg(not(feature = "testkit"))] fn main() {}
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::pagination::GraphServicePages;
    /// use ameide_sdk::proto::common::v1::PaginationResponse;
    /// use ameide_sdk::proto::graph::v1::ListRepositoriesResponse;
    /// use ameide_sdk::testkit::{MockServer, Reply};
    /// use tokio_stream::StreamExt;
    ///
    /// let server = MockServer::new();
    /// let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
    /// for token in ["a", "b", "c"] {
    ///     server.push(path, Reply::message(&ListRepositoriesResponse {
    ///         pagination: Some(PaginationResponse { next_page_token: token.into(), total_size: 0 }),
    ///         ..Default::default()
    ///     }));
    /// }
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://mock.test:9000")
    ///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
    ///     .build()
    ///     .unwrap();
    /// let pages: Vec<_> = client
    ///     .graph()
    ///     .list_repositories_pages(Default::default())
    ///     .max_empty_pages(2)
    ///     .collect()
    ///     .await;
    /// assert_eq!(pages.len(), 3, "two empty pages, then the error");
    /// let err = pages[2].as_ref().unwrap_err();
    /// assert_eq!(err.code(), tonic::Code::Internal);
    /// assert!(err.message().contains("\"b\""), "{err}");
    /// # }
    /// ```
    pub fn max_empty_pages(mut self, pages: u32) -> Self {
        self.max_empty_pages = pages.max(1);
        self
    }

    /// The token to resume from with a new stream (as the request's
    /// `page_token`): the next page's while there is one, the failed page's
    /// after an error, `None` once the last page was read (or the server
    /// repeated a token: resuming would loop). Before the first poll, the
    /// request's own.
    ///
    /// ```
    /// # #[cfg(not(feature = "testkit"))] fn main() {}
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::pagination::GraphServicePages;
    /// use ameide_sdk::proto::common::v1::PaginationResponse;
    /// use ameide_sdk::proto::graph::v1::ListRepositoriesResponse;
    /// use ameide_sdk::testkit::{MockServer, Reply};
    /// use tokio_stream::StreamExt;
    ///
    /// let server = MockServer::new();
    /// let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
    /// server.push(path, Reply::message(&ListRepositoriesResponse {
    ///     pagination: Some(PaginationResponse { next_page_token: "p2".into(), total_size: 0 }),
    ///     ..Default::default()
    /// }));
    /// server.push(path, Reply::status(tonic::Status::unavailable("down")));
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://mock.test:9000")
    ///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
    ///     .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
    ///     .build()
    ///     .unwrap();
    /// let mut pages = client.graph().list_repositories_pages(Default::default());
    /// assert!(pages.next().await.unwrap().is_ok());
    /// assert_eq!(pages.resume_token(), Some("p2"));
    /// assert!(pages.next().await.unwrap().is_err());
    /// assert_eq!(pages.resume_token(), Some("p2"), "the failed page's");
    /// # }
    /// ```
    pub fn resume_token(&self) -> Option<&str> {
        self.resume.as_deref()
    }

    /// Options for every page's call (timeout, headers, session, …). A
    /// request id `id` goes out as `id` on the first page and `id-page-N` on
    /// page N, so that each call has its own. Set before the first poll.
    ///
    /// ```no_run
    /// # async fn demo(client: ameide_sdk::AmeideClient) {
    /// use std::time::Duration;
    /// use ameide_sdk::pagination::GraphServicePages;
    /// let pages = client
    ///     .graph()
    ///     .list_repositories_pages(Default::default())
    ///     .options(ameide_sdk::CallOptions::new().timeout(Duration::from_secs(1)));
    /// # drop(pages); }
    /// ```
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }

    /// The items of every page, in order.
    pub fn items(self) -> Items<R::Item>
    where
        R::Item: Send + 'static,
    {
        Items {
            pages: Box::pin(ItemPages(self)),
            buffered: Vec::new().into_iter(),
        }
    }

    fn ask(&mut self, token: String) -> Result<PageFuture<R>, Error> {
        self.asked = self.asked.saturating_add(1);
        self.current.clone_from(&token);
        let options = match (&self.options.request_id, self.asked) {
            (Some(id), n) if n > 1 => self.options.clone().request_id(format!("{id}-page-{n}")),
            _ => self.options.clone(),
        };
        (self.fetch)(token, &options).map_err(Error::from)
    }
}

/// A peer's token for a message: escaped, at most 64 characters of it.
fn shown(token: &str) -> String {
    let shown: String = token
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string();
    let more = if token.chars().count() > 64 {
        "…"
    } else {
        ""
    };
    format!("\"{shown}{more}\"")
}

/// The error of a repeated token.
fn loop_error(token: &str, page: u32) -> Error {
    Error::local_stop(Status::internal(format!(
        "pagination stopped: after page {page} the server sent next_page_token {} \
         a second time; following it would loop forever",
        shown(token)
    )))
}

/// The error of a runaway listing: too many pages, or too many empty ones.
/// It carries the request id of the page whose token it is about.
fn cap_error(
    request_id: Option<std::sync::Arc<str>>,
    status: fn(String) -> Status,
    why: String,
    token: &str,
) -> Error {
    Error::local_stop(status(format!(
        "pagination stopped: {why}; resume from next_page_token {} (Pages::resume_token)",
        shown(token)
    )))
    .with_request_id(request_id)
}

impl<R: PagedResponse + Send + 'static> Stream for Pages<R> {
    type Item = Result<R, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(call) = this.in_flight.as_mut() {
                let result = std::task::ready!(call.as_mut().poll(cx));
                this.in_flight = None;
                let page = match result {
                    Ok(response) => {
                        // The page that may end the loop: its call's id
                        // goes into a loop or cap error.
                        this.last_request_id = response
                            .extensions()
                            .get::<crate::CallInfo>()
                            .map(|info| info.request_id.clone());
                        response.into_inner()
                    }
                    Err(status) => {
                        this.next = Next::Done;
                        // Resume from the page that failed.
                        this.resume = Some(this.current.clone());
                        return Poll::Ready(Some(Err(Error::from(status))));
                    }
                };
                let token = page.next_page_token();
                if token.is_empty() {
                    this.next = Next::Done;
                    this.resume = None;
                    return Poll::Ready(Some(Ok(page)));
                }
                this.resume = Some(token.to_owned());
                this.empty_run = if page.items().is_empty() {
                    this.empty_run.saturating_add(1)
                } else {
                    0
                };
                this.next = if !this.seen.insert(this.hasher.hash_one(token)) {
                    // Resuming from a token that loops would loop again.
                    this.resume = None;
                    Next::Loop(token.to_owned())
                } else if this.empty_run >= this.max_empty_pages {
                    Next::Capped(cap_error(
                        this.last_request_id.clone(),
                        Status::internal,
                        format!(
                            "the server sent {} empty pages in a row, each with a new next_page_token (max_empty_pages)",
                            this.empty_run
                        ),
                        token,
                    ))
                } else if this.asked >= this.max_pages {
                    Next::Capped(cap_error(
                        this.last_request_id.clone(),
                        Status::resource_exhausted,
                        format!("{} pages read (max_pages)", this.asked),
                        token,
                    ))
                } else {
                    Next::Page(token.to_owned())
                };
                return Poll::Ready(Some(Ok(page)));
            }
            match std::mem::replace(&mut this.next, Next::Done) {
                Next::Done => return Poll::Ready(None),
                Next::Loop(token) => {
                    let error = loop_error(&token, this.asked)
                        .with_request_id(this.last_request_id.clone());
                    return Poll::Ready(Some(Err(error)));
                }
                Next::Capped(error) => return Poll::Ready(Some(Err(error))),
                Next::Page(token) => match this.ask(token) {
                    Ok(call) => this.in_flight = Some(call),
                    Err(error) => return Poll::Ready(Some(Err(error))),
                },
            }
        }
    }
}

/// [`Pages`] as a stream of each page's items.
struct ItemPages<R>(Pages<R>);

/// What [`Items`] needs of its pages besides the stream: where to resume.
trait PageSource<T>: Stream<Item = Result<Vec<T>, Error>> + Send {
    fn resume_token(&self) -> Option<&str>;
    /// The token of the page read last.
    fn current_token(&self) -> &str;
}

impl<R: PagedResponse + Send + 'static> PageSource<R::Item> for ItemPages<R>
where
    R::Item: Send,
{
    fn resume_token(&self) -> Option<&str> {
        self.0.resume_token()
    }

    fn current_token(&self) -> &str {
        &self.0.current
    }
}

impl<R: PagedResponse + Send + 'static> Stream for ItemPages<R> {
    type Item = Result<Vec<R::Item>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().0)
            .poll_next(cx)
            .map(|page| page.map(|page| page.map(PagedResponse::into_items)))
    }
}

/// The items of every page of a paginated method, in order (see the
/// [module docs](self)). A `Stream` of `Result<Item, Error>`; the first error
/// ends it.
///
/// ```
/// # #[cfg(not(feature = "testkit"))] fn main() {}
/// # #[cfg(feature = "testkit")]
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::pagination::GraphServicePages;
/// use ameide_sdk::testkit::{MockServer, Reply};
/// use tokio_stream::StreamExt;
///
/// let server = MockServer::new();
/// server.fallback(Reply::status(tonic::Status::permission_denied("not yours")));
/// let client = ameide_sdk::AmeideClient::builder()
///     .endpoint("http://mock.test:9000")
///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
///     .build()
///     .unwrap();
/// let mut items = client.graph().list_repositories_items(Default::default());
/// let err = items.next().await.unwrap().unwrap_err();
/// assert_eq!(err.code(), tonic::Code::PermissionDenied);
/// assert!(items.next().await.is_none(), "an error ends the stream");
/// # }
/// ```
pub struct Items<T> {
    pages: Pin<Box<dyn PageSource<T>>>,
    buffered: std::vec::IntoIter<T>,
}

impl<T> Items<T> {
    /// The token to resume from with a new stream: the token of the page
    /// whose items are being handed out while some are left (so the new
    /// stream repeats the ones already seen from it, and skips none), else
    /// [`Pages::resume_token`].
    ///
    /// ```
    /// # #[cfg(not(feature = "testkit"))] fn main() {}
    /// # #[cfg(feature = "testkit")]
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::pagination::GraphServicePages;
    /// use ameide_sdk::proto::common::v1::PaginationResponse;
    /// use ameide_sdk::proto::graph::v1::{ListRepositoriesResponse, Repository};
    /// use ameide_sdk::testkit::{MockServer, Reply};
    /// use tokio_stream::StreamExt;
    ///
    /// let server = MockServer::new();
    /// server.fallback(Reply::message(&ListRepositoriesResponse {
    ///     repositories: vec![Repository::default(), Repository::default()],
    ///     pagination: Some(PaginationResponse { next_page_token: "p2".into(), total_size: 0 }),
    /// }));
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://mock.test:9000")
    ///     .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
    ///     .build()
    ///     .unwrap();
    /// let mut items = client.graph().list_repositories_items(Default::default());
    /// items.next().await.unwrap().unwrap();
    /// assert_eq!(items.resume_token(), Some(""), "one item of the first page is left");
    /// items.next().await.unwrap().unwrap();
    /// assert_eq!(items.resume_token(), Some("p2"));
    /// # }
    /// ```
    pub fn resume_token(&self) -> Option<&str> {
        if self.buffered.len() > 0 {
            Some(self.pages.current_token())
        } else {
            self.pages.resume_token()
        }
    }
}

impl<T> fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Items")
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl<T> Unpin for Items<T> {}

impl<T> Stream for Items<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.buffered.next() {
                return Poll::Ready(Some(Ok(item)));
            }
            match std::task::ready!(this.pages.as_mut().poll_next(cx)) {
                Some(Ok(items)) => this.buffered = items.into_iter(),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
    }
}

ameide_proto::__ameide_pagination!(AmeideChannel, Pages, Items);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_repeated_token_is_shown_short_and_on_one_line() {
        let token = format!("a\nb\u{202e}{}", "x".repeat(10_000));
        let err = loop_error(&token, 7);
        assert_eq!(err.code(), tonic::Code::Internal);
        let message = err.message();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.len() < 300, "{}", message.len());
        assert!(message.contains("after page 7"), "{message}");
        assert!(message.contains("a\\nb"), "{message}");
    }
}
