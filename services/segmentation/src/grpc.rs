//! The tonic service: unpacks requests (validated by field), calls the use cases, maps errors.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_cache::Cache;
use crm_db::idempotency::RequestKey;
use crm_proto::segmentation_v1 as pb;
use crm_proto::segmentation_v1::segmentation_service_server::{
    SegmentationService, SegmentationServiceServer,
};
use crm_runtime::TenantId;
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::scores::AbcThresholds;
use crate::error::SegmentationError;
use crate::follower::{self, Feeds};
use crate::membership::{self, GradeRules};
use crate::service::Segmentation;
use crate::service::segments::{SegmentChanges, SegmentDraft};
use crate::service::value_models::{FitRequest, MAX_PREDICTIONS, PredictRequest};
use crate::service::value_reports;
use crate::store::Store;
use crate::valuation;

/// BatchGetCustomerScores takes at most this many names.
const MAX_BATCH: usize = 1000;
/// Longest segment display name and description, in characters.
const MAX_DISPLAY_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Largest PreviewSegment sample.
const MAX_SAMPLE: i32 = 100;
/// How often the outbox sequencer looks for events other processes committed.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(500);

pub struct SegmentationGrpc {
    service: Arc<Segmentation>,
}

impl SegmentationGrpc {
    /// The service over its own database and the shared cache; starts following the feeds.
    pub fn server(
        db: DatabaseConnection,
        cache: Arc<dyn Cache>,
        cache_ttl: Duration,
        feeds: Feeds,
    ) -> SegmentationServiceServer<Self> {
        let service = Arc::new(Segmentation::new(Store::new(db), cache, cache_ttl));
        service.outbox().spawn_sequencer(SUBSCRIBE_POLL);
        let starting = Arc::clone(&service);
        tokio::spawn(async move {
            // Runs a stopped process left behind are failed before anything else, so a new
            // run can start; then the feeds are followed.
            if let Err(error) = starting.fail_interrupted_runs().await {
                tracing::warn!(%error, "failing interrupted score runs failed");
            }
            follower::spawn(starting, feeds);
        });
        SegmentationServiceServer::new(Self { service })
    }
}

fn record_customer(id: &Uuid) {
    tracing::Span::current().record("customer", tracing::field::display(id));
}

/// `customers/{id}/scores` -> id.
fn parse_scores_name(name: &str, field: &str) -> Result<Uuid, SegmentationError> {
    name.strip_prefix("customers/")
        .and_then(|rest| rest.strip_suffix("/scores"))
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| SegmentationError::invalid(field, "must be customers/{customer}/scores"))
}

/// `customers/{id}` -> id.
fn parse_customer_name(name: &str, field: &str) -> Result<Uuid, SegmentationError> {
    name.strip_prefix("customers/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| SegmentationError::invalid(field, "must be customers/{customer}"))
}

/// `segments/{id}` -> id.
fn parse_segment_name(name: &str, field: &str) -> Result<Uuid, SegmentationError> {
    name.strip_prefix("segments/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| SegmentationError::invalid(field, "must be segments/{segment}"))
}

/// A page size in 1..=1000, `default` for 0.
fn page_size(size: i32, default: u64) -> Result<u64, SegmentationError> {
    match size {
        0 => Ok(default),
        1..=1000 => Ok(u64::from(size.unsigned_abs())),
        _ => Err(SegmentationError::invalid("page_size", "must be 0 to 1000")),
    }
}

/// A page token (the last id of the previous page) -> where to continue.
fn page_after(token: &str) -> Result<Option<Uuid>, SegmentationError> {
    if token.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(token)
        .map(Some)
        .map_err(|_| SegmentationError::invalid("page_token", "is not a token this list returned"))
}

fn display_name(value: &str, field: &str) -> Result<String, SegmentationError> {
    let count = value.chars().count();
    if value.trim().is_empty() || count > MAX_DISPLAY_NAME_CHARS {
        return Err(SegmentationError::invalid(
            field,
            format!("must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, not only spaces"),
        ));
    }
    Ok(value.to_owned())
}

fn description(value: &str, field: &str) -> Result<String, SegmentationError> {
    if value.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(SegmentationError::invalid(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

fn request_key<M: Message>(
    method: &'static str,
    request_id: &str,
    cleared: &M,
) -> Result<Option<RequestKey>, SegmentationError> {
    RequestKey::parse(method, request_id, &cleared.encode_to_vec())
        .map_err(|error| SegmentationError::invalid("request_id", error.to_string()))
}

/// A value model's name has the collection's prefix (the version itself is looked up, so a
/// bad one is NOT_FOUND like another tenant's).
fn check_value_model_name(name: &str, field: &str) -> Result<(), SegmentationError> {
    if name.starts_with("valueModels/") {
        Ok(())
    } else {
        Err(SegmentationError::invalid(
            field,
            "must be valueModels/{version} or valueModels/active",
        ))
    }
}

fn time_of(timestamp: &prost_types::Timestamp, field: &str) -> Result<DateTime<Utc>, SegmentationError> {
    u32::try_from(timestamp.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        .filter(|time| time.timestamp() >= 0)
        .ok_or_else(|| SegmentationError::invalid(field, "is not a valid time after 1970"))
}

#[tonic::async_trait]
impl SegmentationService for SegmentationGrpc {
    async fn get_customer_scores(
        &self,
        request: Request<pb::GetCustomerScoresRequest>,
    ) -> Result<Response<pb::CustomerScores>, Status> {
        let tenant = TenantId::of(&request)?;
        let customer = parse_scores_name(&request.get_ref().name, "name")?;
        record_customer(&customer);
        Ok(Response::new(
            self.service.scores(tenant.as_str(), customer).await?,
        ))
    }

    async fn batch_get_customer_scores(
        &self,
        request: Request<pb::BatchGetCustomerScoresRequest>,
    ) -> Result<Response<pb::BatchGetCustomerScoresResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let names = &request.get_ref().names;
        if names.len() > MAX_BATCH {
            return Err(SegmentationError::invalid("names", format!("at most {MAX_BATCH}")).into());
        }
        let customers = names
            .iter()
            .enumerate()
            .map(|(index, name)| parse_scores_name(name, &format!("names[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut scores = Vec::with_capacity(customers.len());
        for customer in customers {
            match self.service.scores(tenant.as_str(), customer).await {
                Ok(found) => scores.push(found),
                Err(SegmentationError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Response::new(pb::BatchGetCustomerScoresResponse { scores }))
    }

    async fn recompute_scores(
        &self,
        request: Request<pb::RecomputeScoresRequest>,
    ) -> Result<Response<pb::ScoreRun>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let now = Utc::now();
        let as_of = match &message.as_of_time {
            Some(time) => time_of(time, "as_of_time")?,
            None => now,
        };
        if as_of > now + chrono::Duration::hours(24) {
            return Err(SegmentationError::invalid("as_of_time", "may be at most 24 hours ahead").into());
        }
        let key = request_key(
            "RecomputeScores",
            &message.request_id,
            &pb::RecomputeScoresRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        Ok(Response::new(
            self.service.start_run(tenant.as_str(), as_of, key).await?,
        ))
    }

    async fn fit_value_models(
        &self,
        request: Request<pb::FitValueModelsRequest>,
    ) -> Result<Response<pb::ValueModel>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let now = Utc::now();
        let calibration_end = match &message.calibration_end_time {
            Some(time) => time_of(time, "calibration_end_time")?,
            None => now,
        };
        if calibration_end > now + chrono::Duration::hours(24) {
            return Err(
                SegmentationError::invalid("calibration_end_time", "may be at most 24 hours ahead").into(),
            );
        }
        let settings = valuation::checked_settings("settings", message.settings.as_ref())?;
        let key = request_key(
            "FitValueModels",
            &message.request_id,
            &pb::FitValueModelsRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let request = FitRequest {
            calibration_end,
            settings,
        };
        Ok(Response::new(
            self.service
                .fit_value_models(tenant.as_str(), request, key)
                .await?,
        ))
    }

    async fn get_value_model(
        &self,
        request: Request<pb::GetValueModelRequest>,
    ) -> Result<Response<pb::ValueModel>, Status> {
        let tenant = TenantId::of(&request)?;
        let name = &request.get_ref().name;
        check_value_model_name(name, "name")?;
        Ok(Response::new(
            self.service.value_model(tenant.as_str(), name).await?,
        ))
    }

    async fn list_value_models(
        &self,
        request: Request<pb::ListValueModelsRequest>,
    ) -> Result<Response<pb::ListValueModelsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        Ok(Response::new(
            self.service
                .value_models(tenant.as_str(), message.page_size, &message.page_token)
                .await?,
        ))
    }

    async fn predict_customer_values(
        &self,
        request: Request<pb::PredictCustomerValuesRequest>,
    ) -> Result<Response<pb::PredictCustomerValuesResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        check_value_model_name(&message.model, "model")?;
        if message.customers.len() > MAX_PREDICTIONS {
            return Err(SegmentationError::invalid("customers", format!("at most {MAX_PREDICTIONS}")).into());
        }
        if message.summaries.len() > MAX_PREDICTIONS {
            return Err(SegmentationError::invalid("summaries", format!("at most {MAX_PREDICTIONS}")).into());
        }
        let customers = message
            .customers
            .iter()
            .enumerate()
            .map(|(index, name)| parse_customer_name(name, &format!("customers[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let as_of = match &message.as_of_time {
            Some(time) => time_of(time, "as_of_time")?,
            None => Utc::now(),
        };
        let expected_purchases_days =
            valuation::checked_purchases_days("expected_purchases_days", message.expected_purchases_days)?;
        let request = PredictRequest {
            model: message.model,
            as_of,
            customers,
            summaries: message.summaries,
            expected_purchases_days,
        };
        Ok(Response::new(
            self.service.predict_values(tenant.as_str(), request).await?,
        ))
    }

    async fn get_customer_equity_report(
        &self,
        request: Request<pb::GetCustomerEquityReportRequest>,
    ) -> Result<Response<pb::CustomerEquityReport>, Status> {
        let tenant = TenantId::of(&request)?;
        let reductions = value_reports::checked_reductions(&request.get_ref().defection_reductions)?;
        Ok(Response::new(
            self.service
                .customer_equity_report(tenant.as_str(), &reductions)
                .await?,
        ))
    }

    async fn get_retention_report(
        &self,
        request: Request<pb::GetRetentionReportRequest>,
    ) -> Result<Response<pb::RetentionReport>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let unit = pb::RetentionPeriodUnit::try_from(message.period)
            .map_err(|_| SegmentationError::invalid("period", "is not a RetentionPeriodUnit"))?;
        let start = message
            .start_time
            .as_ref()
            .map(|time| time_of(time, "start_time"))
            .transpose()?;
        let end = match &message.end_time {
            Some(time) => time_of(time, "end_time")?,
            None => Utc::now(),
        };
        if start.is_some_and(|start| start > end) {
            return Err(SegmentationError::invalid("start_time", "must not be after end_time").into());
        }
        Ok(Response::new(
            self.service
                .retention_report(tenant.as_str(), unit, start, end)
                .await?,
        ))
    }

    async fn get_satisfaction_report(
        &self,
        request: Request<pb::GetSatisfactionReportRequest>,
    ) -> Result<Response<pb::SatisfactionReport>, Status> {
        let tenant = TenantId::of(&request)?;
        Ok(Response::new(
            self.service.satisfaction_report(tenant.as_str()).await?,
        ))
    }

    async fn get_score_run(
        &self,
        request: Request<pb::GetScoreRunRequest>,
    ) -> Result<Response<pb::ScoreRun>, Status> {
        let tenant = TenantId::of(&request)?;
        let id = request
            .get_ref()
            .name
            .strip_prefix("scoreRuns/")
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| SegmentationError::invalid("name", "must be scoreRuns/{score_run}"))?;
        Ok(Response::new(self.service.get_run(tenant.as_str(), id).await?))
    }

    async fn get_rfm_distribution(
        &self,
        request: Request<pb::GetRfmDistributionRequest>,
    ) -> Result<Response<pb::RfmDistribution>, Status> {
        let tenant = TenantId::of(&request)?;
        Ok(Response::new(
            self.service.rfm_distribution(tenant.as_str()).await?,
        ))
    }

    async fn get_pareto_report(
        &self,
        request: Request<pb::GetParetoReportRequest>,
    ) -> Result<Response<pb::ParetoReport>, Status> {
        let tenant = TenantId::of(&request)?;
        Ok(Response::new(self.service.pareto_report(tenant.as_str()).await?))
    }

    async fn get_lifecycle_report(
        &self,
        request: Request<pb::GetLifecycleReportRequest>,
    ) -> Result<Response<pb::LifecycleReport>, Status> {
        let tenant = TenantId::of(&request)?;
        Ok(Response::new(
            self.service.lifecycle_report(tenant.as_str()).await?,
        ))
    }

    async fn get_scoring_settings(
        &self,
        request: Request<pb::GetScoringSettingsRequest>,
    ) -> Result<Response<pb::ScoringSettings>, Status> {
        let tenant = TenantId::of(&request)?;
        if request.get_ref().name != "scoringSettings" {
            return Err(SegmentationError::invalid("name", "must be scoringSettings").into());
        }
        Ok(Response::new(self.service.settings(tenant.as_str()).await?))
    }

    async fn update_scoring_settings(
        &self,
        request: Request<pb::UpdateScoringSettingsRequest>,
    ) -> Result<Response<pb::ScoringSettings>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let settings = message
            .settings
            .clone()
            .ok_or_else(|| SegmentationError::invalid("settings", "is required"))?;
        if settings.name != "scoringSettings" {
            return Err(SegmentationError::invalid("settings.name", "must be scoringSettings").into());
        }
        const FIELDS: [&str; 5] = [
            "currency_code",
            "rfm_window_days",
            "abc_a_share",
            "abc_b_share",
            "value_grade_rules",
        ];
        let paths: Vec<String> = match &message.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            _ => FIELDS.iter().map(|field| (*field).to_owned()).collect(),
        };
        for path in &paths {
            if !FIELDS.contains(&path.as_str()) {
                return Err(SegmentationError::invalid(
                    "update_mask",
                    format!("{path:?} is not an updatable field ({})", FIELDS.join(", ")),
                )
                .into());
            }
        }
        let key = request_key(
            "UpdateScoringSettings",
            &message.request_id,
            &pb::UpdateScoringSettingsRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let updated = self
            .service
            .update_settings(
                tenant.as_str(),
                &settings.etag,
                |current| {
                    for path in &paths {
                        match path.as_str() {
                            "currency_code" => current.currency_code = settings.currency_code.clone(),
                            "rfm_window_days" => current.rfm_window_days = settings.rfm_window_days,
                            "abc_a_share" => current.abc_a_share = settings.abc_a_share,
                            "abc_b_share" => current.abc_b_share = settings.abc_b_share,
                            "value_grade_rules" => {
                                // Stored canonical, so equal rules read back alike.
                                current.value_grade_rules =
                                    GradeRules::of(&settings.value_grade_rules)?.canonical();
                            }
                            _ => {}
                        }
                    }
                    validate_settings(current)
                },
                key,
            )
            .await?;
        Ok(Response::new(updated))
    }

    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let segment = message
            .segment
            .clone()
            .ok_or_else(|| SegmentationError::invalid("segment", "is required"))?;
        let draft = SegmentDraft {
            display_name: display_name(&segment.display_name, "segment.display_name")?,
            description: description(&segment.description, "segment.description")?,
            expression: membership::parse_segment(&segment.expression, "segment.expression")?,
        };
        let key = request_key(
            "CreateSegment",
            &message.request_id,
            &pb::CreateSegmentRequest {
                request_id: String::new(),
                ..message
            },
        )?;
        Ok(Response::new(
            self.service.create_segment(tenant.as_str(), draft, key).await?,
        ))
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let tenant = TenantId::of(&request)?;
        let id = parse_segment_name(&request.get_ref().name, "name")?;
        Ok(Response::new(self.service.segment(tenant.as_str(), id).await?))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let size = page_size(message.page_size, 50)?;
        let after = page_after(&message.page_token)?;
        let page = self.service.list_segments(tenant.as_str(), after, size).await?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_segment(
        &self,
        request: Request<pb::UpdateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        const FIELDS: [&str; 3] = ["display_name", "description", "expression"];
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let segment = message
            .segment
            .clone()
            .ok_or_else(|| SegmentationError::invalid("segment", "is required"))?;
        let id = parse_segment_name(&segment.name, "segment.name")?;
        let paths: Vec<String> = match &message.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            _ => FIELDS.iter().map(|field| (*field).to_owned()).collect(),
        };
        let mut changes = SegmentChanges::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    changes.display_name = Some(display_name(&segment.display_name, "segment.display_name")?);
                }
                "description" => {
                    changes.description = Some(description(&segment.description, "segment.description")?);
                }
                "expression" => {
                    changes.expression = Some(membership::parse_segment(
                        &segment.expression,
                        "segment.expression",
                    )?);
                }
                _ => {
                    return Err(SegmentationError::invalid(
                        "update_mask",
                        format!("{path:?} is not an updatable field ({})", FIELDS.join(", ")),
                    )
                    .into());
                }
            }
        }
        let key = request_key(
            "UpdateSegment",
            &message.request_id,
            &pb::UpdateSegmentRequest {
                request_id: String::new(),
                ..message
            },
        )?;
        Ok(Response::new(
            self.service
                .update_segment(tenant.as_str(), id, &segment.etag, changes, key)
                .await?,
        ))
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<()>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let id = parse_segment_name(&message.name, "name")?;
        self.service
            .delete_segment(tenant.as_str(), id, &message.etag)
            .await?;
        Ok(Response::new(()))
    }

    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let id = parse_segment_name(&message.segment, "segment")?;
        let size = page_size(message.page_size, 100)?;
        let after = page_after(&message.page_token)?;
        let page = self
            .service
            .segment_members(tenant.as_str(), id, after, size)
            .await?;
        Ok(Response::new(pb::ListSegmentMembersResponse {
            members: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    async fn check_segment_membership(
        &self,
        request: Request<pb::CheckSegmentMembershipRequest>,
    ) -> Result<Response<pb::SegmentMembership>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let id = parse_segment_name(&message.segment, "segment")?;
        let customer = parse_customer_name(&message.customer, "customer")?;
        record_customer(&customer);
        Ok(Response::new(
            self.service
                .check_membership(tenant.as_str(), id, customer)
                .await?,
        ))
    }

    async fn preview_segment(
        &self,
        request: Request<pb::PreviewSegmentRequest>,
    ) -> Result<Response<pb::PreviewSegmentResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let expr = membership::parse_segment(&message.expression, "expression")?;
        let sample_size = match message.sample_size {
            0 => 10,
            size @ 1..=MAX_SAMPLE => size,
            _ => {
                return Err(
                    SegmentationError::invalid("sample_size", format!("must be 0 to {MAX_SAMPLE}")).into(),
                );
            }
        };
        let preview = self
            .service
            .preview_segment(tenant.as_str(), &expr, sample_size.unsigned_abs() as usize)
            .await?;
        Ok(Response::new(pb::PreviewSegmentResponse {
            expression: preview.expression,
            member_count: preview.member_count,
            customers_evaluated: preview.customers_evaluated,
            sample: preview
                .sample
                .into_iter()
                .map(|customer| format!("customers/{customer}"))
                .collect(),
        }))
    }

    type SubscribeSegmentEventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SegmentEvent, Status>> + Send + 'static>>;

    async fn subscribe_segment_events(
        &self,
        request: Request<pb::SubscribeSegmentEventsRequest>,
    ) -> Result<Response<Self::SubscribeSegmentEventsStream>, Status> {
        use futures::StreamExt;
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let after = crm_db::outbox::parse_cursor(&message.cursor)
            .ok_or_else(|| SegmentationError::invalid("cursor", "is not a cursor of this stream"))?;
        let segment = if message.segment.is_empty() {
            None
        } else {
            Some(parse_segment_name(&message.segment, "segment")?)
        };
        let events = self
            .service
            .segment_events(tenant.as_str(), after, segment)
            .map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(events)))
    }
}

/// Checks settings after an update is applied, naming the field at fault.
fn validate_settings(settings: &pb::ScoringSettings) -> Result<(), SegmentationError> {
    if crm_proto::money::currency_exponent(&settings.currency_code).is_none() {
        return Err(SegmentationError::invalid(
            "settings.currency_code",
            format!(
                "{:?} is not an ISO 4217 currency customers pay in",
                settings.currency_code
            ),
        ));
    }
    if !(1..=3650).contains(&settings.rfm_window_days) {
        return Err(SegmentationError::invalid(
            "settings.rfm_window_days",
            "must be 1 to 3650",
        ));
    }
    if !(settings.abc_a_share > 0.0 && settings.abc_a_share <= 1.0) {
        return Err(SegmentationError::invalid(
            "settings.abc_a_share",
            "must be above 0 and at most 1",
        ));
    }
    if AbcThresholds::new(settings.abc_a_share, settings.abc_b_share).is_err() {
        return Err(SegmentationError::invalid(
            "settings.abc_b_share",
            "must be at least abc_a_share and at most 1",
        ));
    }
    GradeRules::of(&settings.value_grade_rules)?;
    Ok(())
}
