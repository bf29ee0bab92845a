//! Which methods of the roster page, and how their messages say it.
//!
//! A method pages when its request carries
//! `ameide_core_proto.common.v1.PaginationRequest pagination`, its response
//! carries `PaginationResponse pagination`, and the response has exactly one
//! repeated field, the items. The build finds them in the descriptors and
//! generates, for each, the [`PagedRequest`] and [`PagedResponse`] impls and
//! a row of [`PAGINATED`] (the manifest lists the same methods, under
//! `pagination`, for the other SDKs).
//!
//! ```
//! use ameide_proto::pagination::{PAGINATED, PagedRequest, PagedResponse};
//! use ameide_proto::ameide_core_proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse, Repository};
//!
//! let list = PAGINATED
//!     .iter()
//!     .find(|m| m.path == "/ameide_core_proto.graph.v1.GraphService/ListRepositories")
//!     .unwrap();
//! assert_eq!(list.items_field, "repositories");
//!
//! let mut request = ListRepositoriesRequest::default();
//! assert_eq!(request.page_token(), "");
//! request.set_page_token("p2".into());
//! assert_eq!(request.page_token(), "p2");
//!
//! let page = ListRepositoriesResponse { repositories: vec![Repository::default()], ..Default::default() };
//! assert_eq!(page.next_page_token(), "", "no pagination field: the last page");
//! assert_eq!(page.into_items().len(), 1);
//! ```

/// The request of a paginated method.
pub trait PagedRequest {
    /// The token of the page asked for; empty for the first page.
    fn page_token(&self) -> &str;
    /// Asks for the page of `token`, keeping everything else (the page size too).
    fn set_page_token(&mut self, token: String);
    /// The page size asked for; 0 lets the server choose.
    fn page_size(&self) -> i32;
}

/// The response of a paginated method.
pub trait PagedResponse {
    /// One item of the page.
    type Item;
    /// The token of the next page; empty on the last page.
    fn next_page_token(&self) -> &str;
    /// The number of items over all pages, when the server says (else 0).
    fn total_size(&self) -> i64;
    /// The items of this page.
    fn items(&self) -> &[Self::Item];
    /// The items of this page, by value.
    fn into_items(self) -> Vec<Self::Item>;
}

/// A paginated method (a row of [`PAGINATED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaginatedMethod {
    /// `/package.Service/Method`.
    pub path: &'static str,
    /// The response's repeated field (proto name).
    pub items_field: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/pagination.rs"));
