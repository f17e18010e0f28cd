//! Dynamic segments: definitions, membership kept current with the scores and facts it
//! follows from (in their transaction, with an outbox event per entry and exit), and the
//! reads: members, "why is this customer in it", previews and the event stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use crm_db::idempotency::RequestKey;
use crm_db::outbox::NewEvent;
use crm_proto::customerprofile_v1 as profile;
use crm_proto::segmentation_v1 as pb;
use futures::{Stream, StreamExt};
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use uuid::Uuid;

use super::{Segmentation, replayed};
use crate::domain::expr::Expr;
use crate::error::SegmentationError;
use crate::membership::{self, CompiledSegment, CustomerView};
use crate::scoring;
use crate::store::SegmentRow;

/// Customers read per query when a whole population is evaluated.
const POPULATION_PAGE: u64 = 1000;
/// How often a subscription looks for events other processes committed.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(500);

/// A segment's definition as a client gives it, checked.
#[derive(Debug, Clone)]
pub struct SegmentDraft {
    pub display_name: String,
    pub description: String,
    pub expression: Expr,
}

/// The changes an UpdateSegment asks for; None leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct SegmentChanges {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub expression: Option<Expr>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// What PreviewSegment reports.
#[derive(Debug, Clone)]
pub struct Preview {
    pub expression: String,
    pub member_count: i64,
    pub customers_evaluated: i64,
    pub sample: Vec<Uuid>,
}

pub fn segment_name(id: Uuid) -> String {
    format!("segments/{id}")
}

fn resource(row: &SegmentRow) -> pb::Segment {
    pb::Segment {
        name: segment_name(row.id),
        display_name: row.display_name.clone(),
        description: row.description.clone(),
        expression: row.expression.clone(),
        member_count: row.member_count,
        create_time: Some(scoring::timestamp(row.create_time)),
        update_time: Some(scoring::timestamp(row.update_time)),
        etag: format!("\"{}\"", row.revision),
    }
}

fn segment_event(
    tenant: &str,
    kind: pb::segment_event::Type,
    segment: Uuid,
    customer: Option<Uuid>,
) -> NewEvent {
    let event = pb::SegmentEvent {
        r#type: kind.into(),
        segment: segment_name(segment),
        customer: customer.map(|id| format!("customers/{id}")).unwrap_or_default(),
        ..Default::default()
    };
    NewEvent {
        tenant_id: tenant.to_owned(),
        event_type: kind.as_str_name().to_owned(),
        subject: event.segment.clone(),
        payload: event.encode_to_vec(),
    }
}

/// A stored segment's expression, parsed; it was checked when written, so a failure is
/// stored data gone bad.
fn stored_expression(row: &SegmentRow) -> Result<Expr, SegmentationError> {
    crate::domain::expr::parse(&row.expression, &membership::segment_catalog())
        .map_err(|error| SegmentationError::corrupt(format!("segments/{} expression: {error}", row.id)))
}

/// The membership changes one evaluation leads to, written together.
#[derive(Debug, Default)]
struct MembershipChanges {
    entries: Vec<(Uuid, Uuid)>,
    exits: Vec<(Uuid, Uuid)>,
    deltas: BTreeMap<Uuid, i64>,
    events: Vec<NewEvent>,
}

impl MembershipChanges {
    fn enter(&mut self, tenant: &str, segment: Uuid, customer: Uuid) {
        self.entries.push((segment, customer));
        *self.deltas.entry(segment).or_default() += 1;
        self.events.push(segment_event(
            tenant,
            pb::segment_event::Type::Entered,
            segment,
            Some(customer),
        ));
    }

    fn exit(&mut self, tenant: &str, segment: Uuid, customer: Uuid) {
        self.exits.push((segment, customer));
        *self.deltas.entry(segment).or_default() -= 1;
        self.events.push(segment_event(
            tenant,
            pb::segment_event::Type::Exited,
            segment,
            Some(customer),
        ));
    }
}

impl Segmentation {
    // ---- membership upkeep, inside the caller's transaction ----

    /// The stored facts of `customers`, decoded.
    pub(super) async fn decoded_facts<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[Uuid],
    ) -> Result<HashMap<Uuid, profile::Customer>, SegmentationError> {
        self.store
            .facts_many(db, tenant, customers)
            .await?
            .into_iter()
            .map(|(customer, body)| Ok((customer, membership::decode_facts(&body)?)))
            .collect()
    }

    async fn compiled_segments<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
    ) -> Result<Vec<CompiledSegment>, SegmentationError> {
        self.store
            .segments(db, tenant)
            .await?
            .into_iter()
            .map(|row| {
                Ok(CompiledSegment {
                    id: row.id,
                    expr: stored_expression(&row)?,
                })
            })
            .collect()
    }

    /// Re-evaluates every segment for customers just rescored, entering and exiting them.
    pub(super) async fn update_memberships(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        scored: &[(Uuid, &pb::CustomerScores)],
        facts: &HashMap<Uuid, profile::Customer>,
        now: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        let segments = self.compiled_segments(txn, tenant).await?;
        if segments.is_empty() || scored.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = scored.iter().map(|(id, _)| *id).collect();
        let current = self.store.memberships_of(txn, tenant, &ids).await?;
        let mut changes = MembershipChanges::default();
        for (customer, scores) in scored {
            let view = CustomerView {
                scores,
                facts: facts.get(customer),
            };
            let wanted = membership::segments_for(&segments, &view);
            let held: BTreeSet<Uuid> = current
                .get(customer)
                .map(|held| held.keys().copied().collect())
                .unwrap_or_default();
            for segment in wanted.difference(&held) {
                changes.enter(tenant, *segment, *customer);
            }
            for segment in held.difference(&wanted) {
                changes.exit(tenant, *segment, *customer);
            }
        }
        self.write_membership(txn, tenant, changes, now).await
    }

    /// Takes a customer out of every segment (merged away, erased).
    pub(super) async fn leave_all_segments(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: Uuid,
    ) -> Result<(), SegmentationError> {
        let held = self.store.memberships_of(txn, tenant, &[customer]).await?;
        let mut changes = MembershipChanges::default();
        for segment in held.get(&customer).into_iter().flat_map(BTreeMap::keys) {
            changes.exit(tenant, *segment, customer);
        }
        self.write_membership(txn, tenant, changes, Utc::now()).await
    }

    async fn write_membership(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        changes: MembershipChanges,
        now: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        if changes.events.is_empty() {
            return Ok(());
        }
        self.store.add_members(txn, tenant, &changes.entries, now).await?;
        self.store.remove_members(txn, tenant, &changes.exits).await?;
        self.store.add_member_counts(txn, tenant, &changes.deltas).await?;
        crm_db::outbox::append_all(txn, &changes.events).await?;
        Ok(())
    }

    /// Every scored customer the expression holds for (by id), and how many were evaluated.
    async fn evaluate_population<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        expr: &Expr,
    ) -> Result<(Vec<Uuid>, i64), SegmentationError> {
        let segment = [CompiledSegment {
            id: Uuid::nil(),
            expr: expr.clone(),
        }];
        let mut matched = Vec::new();
        let mut evaluated = 0_i64;
        let mut after = None;
        loop {
            let page = self.store.scores_page(db, tenant, after, POPULATION_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.customer_id);
            let ids: Vec<Uuid> = page.iter().map(|row| row.customer_id).collect();
            let facts = self.decoded_facts(db, tenant, &ids).await?;
            for row in &page {
                let scores =
                    pb::CustomerScores::decode(row.body.as_slice()).map_err(SegmentationError::corrupt)?;
                let view = CustomerView {
                    scores: &scores,
                    facts: facts.get(&row.customer_id),
                };
                evaluated += 1;
                if !membership::segments_for(&segment, &view).is_empty() {
                    matched.push(row.customer_id);
                }
            }
            if (page.len() as u64) < POPULATION_PAGE {
                break;
            }
        }
        Ok((matched, evaluated))
    }

    /// Brings a segment's members in line with its expression over the whole population.
    async fn reevaluate_segment(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        segment: Uuid,
        expr: &Expr,
        now: DateTime<Utc>,
    ) -> Result<(), SegmentationError> {
        let (matched, _) = self.evaluate_population(txn, tenant, expr).await?;
        let wanted: BTreeSet<Uuid> = matched.into_iter().collect();
        let held: BTreeSet<Uuid> = self
            .store
            .members_of(txn, tenant, segment)
            .await?
            .into_iter()
            .collect();
        let mut changes = MembershipChanges::default();
        for customer in wanted.difference(&held) {
            changes.enter(tenant, segment, *customer);
        }
        for customer in held.difference(&wanted) {
            changes.exit(tenant, segment, *customer);
        }
        self.write_membership(txn, tenant, changes, now).await
    }

    // ---- use cases ----

    pub async fn create_segment(
        &self,
        tenant: &str,
        draft: SegmentDraft,
        request: Option<RequestKey>,
    ) -> Result<pb::Segment, SegmentationError> {
        if let Some(key) = &request
            && let Some(stored) = self.store.replay(tenant, key.method, &key.request_id).await?
        {
            return replayed(stored, key);
        }
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.store.begin_write().await?;
        self.store.lock_tenant(&txn, tenant).await?;
        let row = SegmentRow {
            id: Uuid::now_v7(),
            display_name: draft.display_name,
            description: draft.description,
            expression: draft.expression.canonical(),
            revision: 1,
            member_count: 0,
            create_time: now,
            update_time: now,
        };
        self.store.insert_segment(&txn, tenant, &row).await?;
        self.reevaluate_segment(&txn, tenant, row.id, &draft.expression, now)
            .await?;
        self.commit_segment(txn, tenant, row.id, request.as_ref()).await
    }

    /// Ends a create or update: reads the segment back (with its new member count), records
    /// the answer for retries, commits and wakes the outbox sequencer.
    async fn commit_segment(
        &self,
        txn: DatabaseTransaction,
        tenant: &str,
        id: Uuid,
        request: Option<&RequestKey>,
    ) -> Result<pb::Segment, SegmentationError> {
        let row = self
            .store
            .segment(&txn, tenant, id)
            .await?
            .ok_or_else(|| SegmentationError::corrupt("a segment vanished while it was written"))?;
        let written = resource(&row);
        if let Some(key) = request
            && let Some(stored) = self
                .store
                .claim(
                    &txn,
                    tenant,
                    &key.claim(written.encode_to_vec(), written.name.clone()),
                )
                .await?
        {
            txn.rollback().await?;
            return replayed(stored, key);
        }
        txn.commit().await?;
        self.outbox.notify_committed();
        Ok(written)
    }

    /// The segment, in a transaction holding the tenant lock, if `etag` (when given) is
    /// current. On an error the transaction is dropped, which rolls it back.
    async fn segment_for_change(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: Uuid,
        etag: &str,
    ) -> Result<SegmentRow, SegmentationError> {
        self.store.lock_tenant(txn, tenant).await?;
        let row = self
            .store
            .segment(txn, tenant, id)
            .await?
            .ok_or_else(|| SegmentationError::not_found(segment_name(id)))?;
        if !etag.is_empty() && etag != format!("\"{}\"", row.revision) {
            return Err(SegmentationError::EtagMismatch {
                resource_name: segment_name(id),
            });
        }
        Ok(row)
    }

    pub async fn segment(&self, tenant: &str, id: Uuid) -> Result<pb::Segment, SegmentationError> {
        self.store
            .segment(self.store.db(), tenant, id)
            .await?
            .map(|row| resource(&row))
            .ok_or_else(|| SegmentationError::not_found(segment_name(id)))
    }

    pub async fn list_segments(
        &self,
        tenant: &str,
        after: Option<Uuid>,
        page_size: u64,
    ) -> Result<Page<pb::Segment>, SegmentationError> {
        let rows = self.store.segment_page(tenant, after, page_size).await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as u64 == page_size => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Page {
            items: rows.iter().map(resource).collect(),
            next_page_token,
        })
    }

    pub async fn update_segment(
        &self,
        tenant: &str,
        id: Uuid,
        etag: &str,
        changes: SegmentChanges,
        request: Option<RequestKey>,
    ) -> Result<pb::Segment, SegmentationError> {
        if let Some(key) = &request
            && let Some(stored) = self.store.replay(tenant, key.method, &key.request_id).await?
        {
            return replayed(stored, key);
        }
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.store.begin_write().await?;
        let mut row = self.segment_for_change(&txn, tenant, id, etag).await?;
        if let Some(display_name) = changes.display_name {
            row.display_name = display_name;
        }
        if let Some(description) = changes.description {
            row.description = description;
        }
        let new_expression = changes
            .expression
            .filter(|expr| expr.canonical() != row.expression);
        if let Some(expr) = &new_expression {
            row.expression = expr.canonical();
        }
        row.revision = row.revision.saturating_add(1);
        row.update_time = now;
        self.store.update_segment(&txn, tenant, &row).await?;
        if let Some(expr) = &new_expression {
            self.reevaluate_segment(&txn, tenant, id, expr, now).await?;
        }
        self.commit_segment(txn, tenant, id, request.as_ref()).await
    }

    pub async fn delete_segment(&self, tenant: &str, id: Uuid, etag: &str) -> Result<(), SegmentationError> {
        let txn = self.store.begin_write().await?;
        self.segment_for_change(&txn, tenant, id, etag).await?;
        self.store.delete_segment(&txn, tenant, id).await?;
        crm_db::outbox::append(
            &txn,
            &segment_event(tenant, pb::segment_event::Type::Deleted, id, None),
        )
        .await?;
        txn.commit().await?;
        self.outbox.notify_committed();
        Ok(())
    }

    pub async fn segment_members(
        &self,
        tenant: &str,
        id: Uuid,
        after: Option<Uuid>,
        page_size: u64,
    ) -> Result<Page<pb::SegmentMember>, SegmentationError> {
        if self.store.segment(self.store.db(), tenant, id).await?.is_none() {
            return Err(SegmentationError::not_found(segment_name(id)));
        }
        let members = self.store.member_page(tenant, id, after, page_size).await?;
        let next_page_token = match members.last() {
            Some((last, _)) if members.len() as u64 == page_size => last.to_string(),
            _ => String::new(),
        };
        Ok(Page {
            items: members
                .into_iter()
                .map(|(customer, enter_time)| pb::SegmentMember {
                    customer: format!("customers/{customer}"),
                    enter_time: Some(scoring::timestamp(enter_time)),
                })
                .collect(),
            next_page_token,
        })
    }

    /// Whether the customer (the survivor, for a merged-away name) is in the segment, with
    /// every clause evaluated on the same scores and facts membership was decided on.
    pub async fn check_membership(
        &self,
        tenant: &str,
        id: Uuid,
        customer: Uuid,
    ) -> Result<pb::SegmentMembership, SegmentationError> {
        let db = self.store.db();
        let row = self
            .store
            .segment(db, tenant, id)
            .await?
            .ok_or_else(|| SegmentationError::not_found(segment_name(id)))?;
        let owner = self.store.resolve(db, tenant, customer).await?;
        let scores_row = self
            .store
            .scores(db, tenant, owner)
            .await?
            .ok_or_else(|| SegmentationError::not_found(format!("customers/{customer}")))?;
        let scores =
            pb::CustomerScores::decode(scores_row.body.as_slice()).map_err(SegmentationError::corrupt)?;
        let facts = self.decoded_facts(db, tenant, &[owner]).await?.remove(&owner);
        let expr = stored_expression(&row)?;
        let explanation = expr.explain(&CustomerView {
            scores: &scores,
            facts: facts.as_ref(),
        });
        let enter_time = self.store.membership(tenant, id, owner).await?;
        Ok(pb::SegmentMembership {
            segment: segment_name(id),
            customer: format!("customers/{owner}"),
            member: enter_time.is_some(),
            enter_time: enter_time.map(scoring::timestamp),
            clauses: explanation
                .clauses
                .into_iter()
                .map(|clause| pb::ClauseOutcome {
                    clause: clause.clause,
                    matched: clause.matched,
                    actual_value: clause.actual.unwrap_or_default(),
                })
                .collect(),
        })
    }

    pub async fn preview_segment(
        &self,
        tenant: &str,
        expr: &Expr,
        sample_size: usize,
    ) -> Result<Preview, SegmentationError> {
        let (matched, evaluated) = self.evaluate_population(self.store.db(), tenant, expr).await?;
        Ok(Preview {
            expression: expr.canonical(),
            member_count: matched.len() as i64,
            customers_evaluated: evaluated,
            sample: matched.into_iter().take(sample_size).collect(),
        })
    }

    /// The tenant's segment events after `after`, then each new one as it commits, only
    /// `segment`'s when given.
    pub fn segment_events(
        &self,
        tenant: &str,
        after: i64,
        segment: Option<Uuid>,
    ) -> impl Stream<Item = Result<pb::SegmentEvent, SegmentationError>> + Send + 'static {
        let subject = segment.map(segment_name);
        self.outbox
            .subscribe(Some(tenant.to_owned()), after, Vec::new(), SUBSCRIBE_POLL)
            .take_until(crm_runtime::server::draining())
            .filter_map(move |stored| {
                let wanted = match &stored {
                    Ok(event) => subject.as_ref().is_none_or(|subject| *subject == event.subject),
                    Err(_) => true,
                };
                let item = if wanted {
                    Some(stored.map_err(SegmentationError::from).and_then(|stored| {
                        let mut event = pb::SegmentEvent::decode(stored.payload.as_slice())
                            .map_err(SegmentationError::corrupt)?;
                        event.cursor = stored.position.to_string();
                        event.event_time = Some(scoring::timestamp(stored.create_time));
                        Ok(event)
                    }))
                } else {
                    None
                };
                futures::future::ready(item)
            })
    }
}
