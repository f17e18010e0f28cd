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
use crate::service::Segmentation;
use crate::store::Store;

/// BatchGetCustomerScores takes at most this many names.
const MAX_BATCH: usize = 1000;

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

fn request_key<M: Message>(
    method: &'static str,
    request_id: &str,
    cleared: &M,
) -> Result<Option<RequestKey>, SegmentationError> {
    RequestKey::parse(method, request_id, &cleared.encode_to_vec())
        .map_err(|error| SegmentationError::invalid("request_id", error.to_string()))
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
        const FIELDS: [&str; 4] = ["currency_code", "rfm_window_days", "abc_a_share", "abc_b_share"];
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
    Ok(())
}
