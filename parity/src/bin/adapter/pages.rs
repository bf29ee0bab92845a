//! `call.paginate`: the items of every page of a paginated method, collected
//! through the SDK's pagination helper ([`Pages`]) over dynamic messages.

use std::future::Future;
use std::pin::Pin;

use ameide_parity::protocol::Outcome;
use ameide_parity::wire::BytesCodec;
use ameide_sdk::pagination::{PAGINATED, PagedRequest, PagedResponse, Pages};
use ameide_sdk::{AmeideClient, CallOptions};
use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use prost_reflect::{DynamicMessage, MethodDescriptor, Value};
use tonic::Status;

/// A page request of any paginated method.
#[derive(Clone)]
struct DynRequest {
    message: DynamicMessage,
    token: String,
    size: i32,
    /// Under `--break drop-page-size`: later pages ask for no page size.
    drop_size: bool,
}

impl PagedRequest for DynRequest {
    fn page_token(&self) -> &str {
        &self.token
    }

    fn set_page_token(&mut self, token: String) {
        if let Some(Value::Message(pagination)) = self.message.get_field_by_name_mut("pagination") {
            pagination.set_field_by_name("page_token", Value::String(token.clone()));
            if self.drop_size && !token.is_empty() {
                pagination.clear_field_by_name("page_size");
            }
        }
        self.token = token;
    }

    fn page_size(&self) -> i32 {
        self.size
    }
}

/// One page of any paginated method: its token and its items as proto-JSON.
struct DynPage {
    next: String,
    total: i64,
    items: Vec<serde_json::Value>,
}

impl PagedResponse for DynPage {
    type Item = serde_json::Value;

    fn next_page_token(&self) -> &str {
        &self.next
    }

    fn total_size(&self) -> i64 {
        self.total
    }

    fn items(&self) -> &[serde_json::Value] {
        &self.items
    }

    fn into_items(self) -> Vec<serde_json::Value> {
        self.items
    }
}

/// A field of the message's `pagination` (`PaginationRequest` or
/// `PaginationResponse`), its default when that is unset.
fn pagination(message: &DynamicMessage, name: &str) -> Option<Value> {
    match message.get_field_by_name("pagination")?.as_ref() {
        Value::Message(p) => p.get_field_by_name(name).map(|v| v.into_owned()),
        _ => None,
    }
}

impl DynPage {
    fn decode(bytes: &[u8], method: &MethodDescriptor, field: &str) -> Result<Self, String> {
        let message = DynamicMessage::decode(method.output(), bytes)
            .map_err(|e| format!("failed to decode the response message: {e}"))?;
        let items = match message.get_field_by_name(field).as_deref() {
            Some(Value::List(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Message(m) => serde_json::to_value(m).map_err(|e| e.to_string()),
                    other => Err(format!("{field} holds {other:?}, not messages")),
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok(DynPage {
            next: pagination(&message, "next_page_token")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            total: pagination(&message, "total_size")
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            items,
        })
    }
}

/// What every page's call needs.
#[derive(Clone)]
struct Target {
    client: AmeideClient,
    path: PathAndQuery,
    method: MethodDescriptor,
    field: &'static str,
}

type PageResult = Result<tonic::Response<DynPage>, Status>;

/// One page's call, through the client's whole stack.
fn fetch(
    target: Target,
    request: tonic::Request<DynRequest>,
) -> Pin<Box<dyn Future<Output = PageResult> + Send>> {
    Box::pin(async move {
        let request = request.map(|r| Bytes::from(r.message.encode_to_vec()));
        let mut grpc = super::grpc_of(&target.client);
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let response = grpc
            .unary::<Bytes, Bytes, _>(request, target.path, BytesCodec)
            .await?;
        let (metadata, bytes, extensions) = response.into_parts();
        let page =
            DynPage::decode(&bytes, &target.method, target.field).map_err(Status::internal)?;
        Ok(tonic::Response::from_parts(metadata, page, extensions))
    })
}

/// Collects the items of every page into `outcome`; the item stream's end
/// (OK, or the error that ended it) is the outcome's code. Per-call facts
/// are not reported: a paginated call is many calls.
pub async fn collect(
    outcome: &mut Outcome,
    client: AmeideClient,
    path: &str,
    method: MethodDescriptor,
    request: &serde_json::Value,
    options: CallOptions,
    breaks: &[String],
) -> Result<(), String> {
    let field = PAGINATED
        .iter()
        .find(|m| m.path == path)
        .map(|m| m.items_field)
        .ok_or_else(|| format!("{path} is not a paginated method"))?;
    let message = DynamicMessage::deserialize(method.input(), request)
        .map_err(|e| format!("call.request: {e}"))?;
    let first = DynRequest {
        token: pagination(&message, "page_token")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        size: pagination(&message, "page_size")
            .and_then(|v| v.as_i32())
            .unwrap_or(0),
        message,
        drop_size: super::has(breaks, "drop-page-size"),
    };
    let target = Target {
        client,
        path: PathAndQuery::try_from(path).map_err(|e| e.to_string())?,
        method,
        field,
    };
    let started = std::time::Instant::now();
    let end = if super::has(breaks, "no-loop-guard") {
        follow_tokens(outcome, target, first, &options).await
    } else if super::has(breaks, "no-pagination") {
        // The first page's items only.
        let mut pages = Pages::new(first, target, fetch).options(options);
        match tokio_stream::StreamExt::next(&mut pages).await {
            Some(Ok(page)) => {
                outcome.responses.extend(page.into_items());
                Ok(())
            }
            Some(Err(e)) => Err((e.code(), e.message().to_owned())),
            None => Ok(()),
        }
    } else {
        let mut items = Pages::new(first, target, fetch).options(options).items();
        let mut end = Ok(());
        while let Some(item) = tokio_stream::StreamExt::next(&mut items).await {
            match item {
                Ok(item) => outcome.responses.push(item),
                Err(e) => {
                    end = Err((e.code(), e.message().to_owned()));
                    break;
                }
            }
        }
        end
    };
    outcome.elapsed_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    match end {
        Ok(()) => outcome.code = "OK".into(),
        Err((code, message)) => {
            outcome.code = ameide_sdk::canonical_code_name(code).to_owned();
            outcome.message = message;
        }
    }
    Ok(())
}

/// Under `--break no-loop-guard`: the tokens followed by hand, with no
/// check for a token the server sends twice (at most 20 pages).
async fn follow_tokens(
    outcome: &mut Outcome,
    target: Target,
    mut request: DynRequest,
    options: &CallOptions,
) -> Result<(), (tonic::Code, String)> {
    for _ in 0..20 {
        let call = options
            .into_request(request.clone())
            .map_err(|e| (tonic::Code::InvalidArgument, e.to_string()))?;
        let page = fetch(target.clone(), call)
            .await
            .map_err(|s| (s.code(), s.message().to_owned()))?
            .into_inner();
        outcome.responses.extend(page.items);
        if page.next.is_empty() {
            return Ok(());
        }
        request.set_page_token(page.next);
    }
    Ok(())
}
