//! Customer-value models: fitting a version per tenant, the active one feeding every
//! customer's `value` (applied by a score run after each successful fit), and predictions
//! that store nothing.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use crm_db::idempotency::RequestKey;
use crm_proto::segmentation_v1 as pb;
use prost::Message;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use super::{Segmentation, replayed};
use crate::domain::clv::CustomerSummary;
use crate::domain::scores;
use crate::error::SegmentationError;
use crate::scoring::{self, Settings};
use crate::store::StoredValueModel;
use crate::valuation::{self, PredictingModel};

/// Most customers or summaries one prediction request may name.
pub const MAX_PREDICTIONS: usize = 1000;
const ACTIVE_ALIAS: &str = "valueModels/active";

/// A checked FitValueModels request.
#[derive(Debug, Clone)]
pub struct FitRequest {
    pub calibration_end: DateTime<Utc>,
    /// Checked, defaults filled but the margin ratio.
    pub settings: pb::ValueModelSettings,
}

/// A checked PredictCustomerValues request.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    /// `valueModels/{version}` or `valueModels/active`.
    pub model: String,
    pub as_of: DateTime<Utc>,
    pub customers: Vec<Uuid>,
    /// Still in proto form: their money is checked against the model's currency.
    pub summaries: Vec<pb::PurchaseSummary>,
    pub expected_purchases_days: Option<i32>,
}

fn state(value: pb::value_model::State) -> i32 {
    value.into()
}

fn decode(stored: &StoredValueModel) -> Result<pb::ValueModel, SegmentationError> {
    pb::ValueModel::decode(stored.body.as_slice()).map_err(SegmentationError::corrupt)
}

/// The version number in `valueModels/{version}`; `None` for the active alias.
fn version_of(name: &str) -> Result<Option<i64>, SegmentationError> {
    if name == ACTIVE_ALIAS {
        return Ok(None);
    }
    name.strip_prefix("valueModels/")
        .and_then(|version| version.parse::<i64>().ok())
        .filter(|version| *version > 0)
        .map(Some)
        .ok_or_else(|| SegmentationError::not_found(name.to_owned()))
}

impl Segmentation {
    /// The tenant's active model if it predicts in the scoring currency (a model fitted
    /// before the currency changed is not applied to the new currency's amounts).
    pub(crate) async fn active_value_model<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        currency: &str,
    ) -> Result<Option<PredictingModel>, SegmentationError> {
        let Some(stored) = self
            .store
            .latest_value_model_in_state(db, tenant, state(pb::value_model::State::Active))
            .await?
        else {
            return Ok(None);
        };
        Ok(PredictingModel::of(&decode(&stored)?)?.filter(|model| model.currency == currency))
    }

    /// Fits the models on every owner's history up to the calibration end, keeps the fit as
    /// a version and, when both converged, activates it and starts a score run to apply it.
    pub async fn fit_value_models(
        self: &Arc<Self>,
        tenant: &str,
        request: FitRequest,
        key: Option<RequestKey>,
    ) -> Result<pb::ValueModel, SegmentationError> {
        if let Some(key) = &key
            && let Some(stored) = self.store.replay(tenant, key.method, &key.request_id).await?
        {
            return replayed(stored, key);
        }
        let state_row = self.store.tenant_state(self.store.db(), tenant).await?;
        let currency = Settings::of(&state_row)?.currency;
        let end_day = scores::day_of(request.calibration_end);
        let mut summaries: Vec<CustomerSummary> = Vec::new();
        let (mut margin_minor, mut net_minor) = (0_i64, 0_i64);
        self.scan_owners(tenant, |_, aggregates| {
            for day in aggregates.days().iter().take_while(|day| day.day <= end_day) {
                margin_minor = margin_minor.saturating_add(day.margin_minor);
                net_minor = net_minor.saturating_add(day.net_minor);
            }
            if let Some(summary) = valuation::summary_of(&aggregates, end_day, &currency)? {
                summaries.push(summary);
            }
            Ok(())
        })
        .await?;
        // The optimiser is CPU work of up to a second for a million customers: off the
        // request threads.
        let outcome = tokio::task::spawn_blocking(move || valuation::fit(&summaries))
            .await
            .map_err(|error| SegmentationError::corrupt(format!("the fit stopped: {error}")))??;

        let mut settings = request.settings;
        settings.margin_ratio = Some(
            settings
                .margin_ratio
                .unwrap_or_else(|| valuation::default_margin_ratio(margin_minor, net_minor)),
        );
        let (transactions, spend) = valuation::fitted_models(&outcome);
        let rejection = outcome.rejection();
        let now = Utc::now();
        let mut resource = pb::ValueModel {
            state: state(if rejection.is_some() {
                pb::value_model::State::Rejected
            } else {
                pb::value_model::State::Active
            }),
            calibration_end_time: Some(scoring::timestamp(request.calibration_end)),
            currency_code: currency,
            transactions: Some(transactions),
            spend: Some(spend),
            settings: Some(settings),
            fit_duration: prost_types::Duration::try_from(outcome.duration).ok(),
            rejection_reason: rejection.clone().unwrap_or_default(),
            create_time: Some(scoring::timestamp(now)),
            ..Default::default()
        };

        let txn = self.store.begin_write().await?;
        self.store.lock_tenant(&txn, tenant).await?;
        let version = self.store.next_value_model_version(&txn, tenant).await?;
        resource.version = version;
        resource.name = format!("valueModels/{version}");
        let mut started_run = None;
        if rejection.is_none() {
            if let Some(previous) = self
                .store
                .latest_value_model_in_state(&txn, tenant, state(pb::value_model::State::Active))
                .await?
            {
                let mut superseded = decode(&previous)?;
                superseded.state = state(pb::value_model::State::Superseded);
                self.store
                    .update_value_model(
                        &txn,
                        tenant,
                        StoredValueModel {
                            version: previous.version,
                            state: superseded.state,
                            body: superseded.encode_to_vec(),
                        },
                    )
                    .await?;
            }
            if let Ok(run) = self.create_run(&txn, tenant, now).await? {
                resource.score_run = run.name.clone();
                started_run = Some(run);
            }
        }
        if let Some(key) = &key
            && let Some(stored) = self
                .store
                .claim(
                    &txn,
                    tenant,
                    &key.claim(resource.encode_to_vec(), resource.name.clone()),
                )
                .await?
        {
            txn.rollback().await?;
            return replayed(stored, key);
        }
        self.store
            .insert_value_model(
                &txn,
                tenant,
                StoredValueModel {
                    version,
                    state: resource.state,
                    body: resource.encode_to_vec(),
                },
                now,
            )
            .await?;
        txn.commit().await?;
        if let Some(run) = started_run {
            self.spawn_run(tenant, &run, now)?;
        }
        Ok(resource)
    }

    /// A version, or the active one.
    pub async fn value_model(&self, tenant: &str, name: &str) -> Result<pb::ValueModel, SegmentationError> {
        let stored = match version_of(name)? {
            Some(version) => self.store.value_model(self.store.db(), tenant, version).await?,
            None => {
                self.store
                    .latest_value_model_in_state(
                        self.store.db(),
                        tenant,
                        state(pb::value_model::State::Active),
                    )
                    .await?
            }
        };
        decode(&stored.ok_or_else(|| SegmentationError::not_found(name.to_owned()))?)
    }

    /// A page of versions, newest first; the token is the last version returned.
    pub async fn value_models(
        &self,
        tenant: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListValueModelsResponse, SegmentationError> {
        let limit = match page_size {
            0 => 20,
            1..=100 => page_size,
            _ => return Err(SegmentationError::invalid("page_size", "must be 0-100")),
        };
        let before = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token
                    .parse::<i64>()
                    .ok()
                    .filter(|version| *version > 0)
                    .ok_or_else(|| SegmentationError::invalid("page_token", "is not a token of this list"))?,
            )
        };
        let limit = u64::try_from(limit).unwrap_or(20);
        let page = self.store.value_models_page(tenant, before, limit + 1).await?;
        let more = page.len() as u64 > limit;
        let value_models = page
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if more {
            value_models
                .last()
                .map(|model| model.version.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListValueModelsResponse {
            value_models,
            next_page_token,
        })
    }

    /// Predictions of a model version for customers (their history as of the request's day)
    /// and for summaries as given.
    pub async fn predict_values(
        &self,
        tenant: &str,
        request: PredictRequest,
    ) -> Result<pb::PredictCustomerValuesResponse, SegmentationError> {
        let resource = self.value_model(tenant, &request.model).await?;
        let mut model = PredictingModel::of(&resource)?.ok_or_else(|| SegmentationError::ModelRejected {
            name: resource.name.clone(),
            reason: resource.rejection_reason.clone(),
        })?;
        if let Some(days) = request.expected_purchases_days {
            model = model.with_purchases_days(days);
        }
        let currency = model.currency.clone();
        let as_of_day = scores::day_of(request.as_of);

        let what_if = request
            .summaries
            .iter()
            .enumerate()
            .map(|(index, summary)| {
                valuation::summary_from_request(&format!("summaries[{index}]"), summary, &currency).map(Some)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let db = self.store.db();
        let requested: std::collections::BTreeSet<Uuid> = request.customers.iter().copied().collect();
        let owners = self.store.resolve_many(db, tenant, &requested).await?;
        let wanted: Vec<Uuid> = owners.values().copied().collect();
        let mut origins = self.store.origins_of_many(db, tenant, &wanted).await?;
        let mut customers = Vec::with_capacity(request.customers.len());
        let mut customer_summaries = Vec::with_capacity(request.customers.len());
        for customer in &request.customers {
            let owner = owners.get(customer).copied();
            let summary = match owner {
                Some(owner) => {
                    let (aggregates, _) =
                        scoring::combine(origins.get(&owner).map_or(&[][..], Vec::as_slice))?;
                    valuation::summary_of(&aggregates, as_of_day, &currency)?
                }
                None => None,
            };
            customers.push(owner.unwrap_or(*customer));
            customer_summaries.push(summary);
        }
        origins.clear();

        let customer_values = model.predict(&customer_summaries)?;
        let summary_values = model.predict(&what_if)?;
        Ok(pb::PredictCustomerValuesResponse {
            model: model.name.clone(),
            customer_predictions: customers
                .into_iter()
                .zip(customer_summaries)
                .zip(customer_values)
                .map(|((customer, summary), value)| {
                    valuation::prediction(format!("customers/{customer}"), summary, value, &currency)
                })
                .collect(),
            summary_predictions: what_if
                .into_iter()
                .zip(summary_values)
                .map(|(summary, value)| valuation::prediction(String::new(), summary, value, &currency))
                .collect(),
        })
    }
}
