//! The gRPC transport: converts messages, calls the service, maps errors.
//! Also builds health and reflection, which stay open to every caller.

mod convert;
pub mod endpoints;
pub mod recovery;

pub use convert::{basic_view, json_to_struct, strip_details, struct_to_json};

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::domain::DispatchInput;
use crate::metrics::Metrics;
use crate::proto::v1 as pb;
use crate::proto::v1::webhook_service_server::{WebhookService as WebhookServiceRpc, WebhookServiceServer};
use crate::service::{DetailsQuery, ListQuery, WebhookService};
use uuid::Uuid;

/// The `hookpost.v1.WebhookService` implementation.
#[derive(Clone)]
pub struct GrpcApi {
    service: WebhookService,
    metrics: Arc<Metrics>,
}

impl GrpcApi {
    pub fn new(service: WebhookService, metrics: Arc<Metrics>) -> Self {
        Self { service, metrics }
    }

    /// Counts and times one RPC (gateway calls included: they are RPCs too).
    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await;
        let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.observe_rpc(method, code, started.elapsed());
        result
    }

    /// The caller, as the transport's authentication layer established it
    /// from the request's headers before its message was decoded.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        Ok(crate::transport::auth::principal(request.extensions())?)
    }

    /// The tonic service, with a message limit above every field limit so an
    /// oversized field is reported by name rather than as a transport error.
    pub fn into_server(self, max_message_bytes: usize) -> WebhookServiceServer<Self> {
        WebhookServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl WebhookServiceRpc for GrpcApi {
    type WatchWebhookLogsStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::WatchWebhookLogsResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, name = "WatchWebhookLogs")]
    async fn watch_webhook_logs(
        &self,
        request: Request<pb::WatchWebhookLogsRequest>,
    ) -> Result<Response<Self::WatchWebhookLogsStream>, Status> {
        use futures_util::StreamExt;
        self.observed("WatchWebhookLogs", async {
            let who = self.caller(&request).await?;
            let query = crate::service::WatchQuery::try_from(request.into_inner())?;
            let basic = query.bodies == crate::store::Bodies::Without;
            let events = self.service.watch(&who, query).await?;
            let stream = events.map(move |e| match e {
                Ok(e) => Ok(convert::watch_event_to_proto(e, basic)),
                Err(err) => Err(Status::from(err)),
            });
            Ok(Response::new(Box::pin(stream) as Self::WatchWebhookLogsStream))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "Dispatch", fields(request_id = tracing::field::Empty))]
    async fn dispatch(&self, request: Request<pb::DispatchRequest>) -> Result<Response<pb::DispatchResponse>, Status> {
        self.observed("Dispatch", async {
            let who = self.caller(&request).await?;
            let input = DispatchInput::try_from(request.into_inner())?;
            let d = self.service.dispatch(&who, input).await?;
            tracing::Span::current().record("request_id", tracing::field::display(d.request_id));
            Ok(Response::new(pb::DispatchResponse {
                request_id: if d.request_ids.is_empty() { String::new() } else { d.request_id.to_string() },
                log_id: d.log_id,
                duplicate: d.duplicate,
                message_id: d.message_id.to_string(),
                request_ids: d.request_ids.iter().map(Uuid::to_string).collect(),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "ListWebhookLogs")]
    async fn list_webhook_logs(
        &self,
        request: Request<pb::ListWebhookLogsRequest>,
    ) -> Result<Response<pb::ListWebhookLogsResponse>, Status> {
        self.observed("ListWebhookLogs", async {
            let who = self.caller(&request).await?;
            let basic = convert::basic_view(request.get_ref().view, false);
            let query = ListQuery::try_from(request.into_inner())?;
            let mut page = self.service.list_logs(&who, query).await?;
            if basic {
                page.logs.iter_mut().for_each(crate::domain::LogRecord::strip_bodies);
            }
            Ok(Response::new(pb::ListWebhookLogsResponse {
                logs: page.logs.into_iter().map(Into::into).collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetLogDetails", fields(request_id = tracing::field::Empty))]
    async fn get_log_details(
        &self,
        request: Request<pb::GetLogDetailsRequest>,
    ) -> Result<Response<pb::GetLogDetailsResponse>, Status> {
        self.observed("GetLogDetails", async {
            let who = self.caller(&request).await?;
            tracing::Span::current().record("request_id", request.get_ref().request_id.as_str());
            let basic = convert::basic_view(request.get_ref().view, false);
            let query = DetailsQuery::try_from(request.into_inner())?;
            let mut details = self.service.log_details(&who, query).await?;
            if basic {
                convert::strip_details(&mut details);
            }
            Ok(Response::new(details.into()))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "CreateEndpoint")]
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::CreateEndpointResponse>, Status> {
        self.observed("CreateEndpoint", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::create(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetEndpoint")]
    async fn get_endpoint(
        &self,
        request: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::GetEndpointResponse>, Status> {
        self.observed("GetEndpoint", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::get(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "ListEndpoints")]
    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        self.observed("ListEndpoints", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::list(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "UpdateEndpoint")]
    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::UpdateEndpointResponse>, Status> {
        self.observed("UpdateEndpoint", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::update(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "DeleteEndpoint")]
    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        self.observed("DeleteEndpoint", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::delete(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetEndpointSecret")]
    async fn get_endpoint_secret(
        &self,
        request: Request<pb::GetEndpointSecretRequest>,
    ) -> Result<Response<pb::GetEndpointSecretResponse>, Status> {
        self.observed("GetEndpointSecret", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::secret(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "RotateEndpointSecret")]
    async fn rotate_endpoint_secret(
        &self,
        request: Request<pb::RotateEndpointSecretRequest>,
    ) -> Result<Response<pb::RotateEndpointSecretResponse>, Status> {
        self.observed("RotateEndpointSecret", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::rotate(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetOrganizationSecret")]
    async fn get_organization_secret(
        &self,
        request: Request<pb::GetOrganizationSecretRequest>,
    ) -> Result<Response<pb::GetOrganizationSecretResponse>, Status> {
        self.observed("GetOrganizationSecret", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::organization_secret(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "RotateOrganizationSecret")]
    async fn rotate_organization_secret(
        &self,
        request: Request<pb::RotateOrganizationSecretRequest>,
    ) -> Result<Response<pb::RotateOrganizationSecretResponse>, Status> {
        self.observed("RotateOrganizationSecret", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::rotate_organization_secret(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "RedeliverWebhook")]
    async fn redeliver_webhook(
        &self,
        request: Request<pb::RedeliverWebhookRequest>,
    ) -> Result<Response<pb::RedeliverWebhookResponse>, Status> {
        self.observed("RedeliverWebhook", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(recovery::redeliver(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "RecoverWebhooks")]
    async fn recover_webhooks(
        &self,
        request: Request<pb::RecoverWebhooksRequest>,
    ) -> Result<Response<pb::RecoverWebhooksResponse>, Status> {
        self.observed("RecoverWebhooks", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(recovery::recover(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetOperation")]
    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        self.observed("GetOperation", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(recovery::get_operation(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "PauseEndpoint")]
    async fn pause_endpoint(
        &self,
        request: Request<pb::PauseEndpointRequest>,
    ) -> Result<Response<pb::PauseEndpointResponse>, Status> {
        self.observed("PauseEndpoint", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(recovery::pause(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "ResumeEndpoint")]
    async fn resume_endpoint(
        &self,
        request: Request<pb::ResumeEndpointRequest>,
    ) -> Result<Response<pb::ResumeEndpointResponse>, Status> {
        self.observed("ResumeEndpoint", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(recovery::resume(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetCaller")]
    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> Result<Response<pb::GetCallerResponse>, Status> {
        self.observed("GetCaller", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(caller_to_proto(&who)))
        })
        .await
    }

    #[tracing::instrument(skip_all, name = "GetEndpointStats")]
    async fn get_endpoint_stats(
        &self,
        request: Request<pb::GetEndpointStatsRequest>,
    ) -> Result<Response<pb::GetEndpointStatsResponse>, Status> {
        self.observed("GetEndpointStats", async {
            let who = self.caller(&request).await?;
            Ok(Response::new(endpoints::stats(&self.service, &who, request.into_inner()).await?))
        })
        .await
    }
}

/// The caller as `GetCaller` describes it.
pub fn caller_to_proto(who: &Principal) -> pb::GetCallerResponse {
    let (kind, organization_id) = match who.organization() {
        Some(org) => (pb::CallerKind::Organization, org.to_string()),
        None => (pb::CallerKind::Service, String::new()),
    };
    pb::GetCallerResponse { kind: kind.into(), organization_id, key_prefix: who.key_prefix.clone() }
}
