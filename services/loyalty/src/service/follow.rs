//! Applying other services' events: purchases earn (base rate, tier multiplier, campaigns,
//! the referrer's bonus), refunds reverse what their purchase earned, merges and unmerges move
//! lots between accounts.
//!
//! A batch of a feed's events is applied in one transaction together with the feed's cursor,
//! and every entry an event makes has an id derived from the event (`accrual:{purchase}`,
//! `reversal:{refund}`, `referral:{purchase}`, `merge-in:{position}:{customer}`…), so an event
//! delivered twice, or applied again after a crash before the cursor moved, changes nothing.
//! The members of a batch are loaded together in a fixed number of queries: one transaction
//! per purchase would cap accruals at what one round trip per query allows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{Loyalty, commit, gave_up, now, retryable};
use crate::domain::{
    Account, Basket, BasketLine, Birthday, Campaign, CampaignAward, Command, CustomerId, EarnContext,
    EarnQuote, EarnSource, EntryId, EntryKind, LotId, LoyaltyEvent, MergeCommand, MergeOutcome, Operation,
    Outcome, Program, RefundReversal, UnmergeOutcome, merge, quote_points, referral_bonus, reversal_points,
    unmerge,
};
use crate::error::LoyaltyError;
use crate::store::{StoreError, StoredAccount};

/// One event of a feed, decoded, at its position in the feed.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub position: i64,
    pub tenant: String,
    pub change: FeedChange,
}

/// What an event asks of loyalty.
#[derive(Debug, Clone)]
pub enum FeedChange {
    Purchase(PurchaseFacts),
    Refund(RefundFacts),
    /// `merged` customers were merged into `survivor`.
    Merged {
        survivor: CustomerId,
        merged: Vec<CustomerId>,
    },
    /// `restored` customers were split off `survivor` again.
    Unmerged {
        survivor: CustomerId,
        restored: Vec<CustomerId>,
    },
    /// The customer's personal data was erased: its records stay under `pseudonym`.
    Erased {
        customer: CustomerId,
        pseudonym: CustomerId,
    },
    /// An event that changes nothing here; its position still moves the cursor.
    Nothing,
}

/// A purchase as interaction recorded it, with what the follower learnt about its customer.
#[derive(Debug, Clone)]
pub struct PurchaseFacts {
    pub purchase_id: String,
    /// The customer who bought (interaction's `origin_customer`): the lot is theirs, whichever
    /// account holds it.
    pub customer: CustomerId,
    pub purchased_at: DateTime<Utc>,
    pub currency_code: String,
    pub amount_minor: i64,
    /// The interaction `Channel` value name, e.g. `CHANNEL_WEB`.
    pub channel: Option<String>,
    /// Read from customer-profile only when a rule needs it (see [`Loyalty::purchase_needs`]).
    pub profile: Option<ProfileFacts>,
    /// The campaign segments (of [`Loyalty::purchase_needs`]) the customer is in.
    pub segment_ids: BTreeSet<String>,
}

/// What earning needs from a customer's profile.
#[derive(Debug, Clone, Default)]
pub struct ProfileFacts {
    pub referrer: Option<CustomerId>,
    pub birthday: Option<Birthday>,
}

#[derive(Debug, Clone)]
pub struct RefundFacts {
    pub refund_id: String,
    pub purchase_id: String,
    pub customer: CustomerId,
    pub currency_code: String,
    pub amount_minor: i64,
}

/// What the follower must find out about a batch's purchases before applying it.
#[derive(Debug, Default)]
pub struct PurchaseNeeds {
    /// Customers whose profile (referrer, birthday) matters.
    pub profiles_of: BTreeSet<(String, CustomerId)>,
    /// (tenant, customer) -> segment ids to check membership of.
    pub segments_of: BTreeMap<(String, CustomerId), BTreeSet<String>>,
}

/// What a batch did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub applied: usize,
    /// Events already applied (re-delivered, or re-read after a crash).
    pub replayed: usize,
    /// Events that earn nothing here: no program, another currency, no accrual to reverse.
    pub skipped: usize,
}

impl Loyalty {
    /// Which profiles and segment memberships the purchases of a batch need: the profile of a
    /// customer whose first purchase this may be (the referrer's bonus, first-purchase
    /// campaigns) or who may have a birthday campaign, and the segments of the campaigns
    /// running at the purchase. Read without locking: the batch itself decides.
    pub async fn purchase_needs(&self, items: &[FeedItem]) -> Result<PurchaseNeeds, LoyaltyError> {
        let mut needs = PurchaseNeeds::default();
        let db = self.store.db();
        for (tenant, purchases) in purchases_by_tenant(items) {
            let Some(program) = self.store.program(db, tenant).await? else {
                continue;
            };
            let (from, to) = time_span(purchases.iter().map(|purchase| purchase.purchased_at));
            let campaigns = self.store.campaigns_between(db, tenant, from, to).await?;
            let birthdays = campaigns.iter().any(|campaign| campaign.conditions.birthday_only);
            let customers: Vec<CustomerId> = purchases
                .iter()
                .map(|purchase| purchase.customer.clone())
                .collect();
            let firsts = self.store.first_purchases(db, tenant, &customers).await?;
            for purchase in purchases {
                let maybe_first = firsts
                    .get(&purchase.customer)
                    .is_none_or(|first| *first == purchase.purchase_id);
                if birthdays || (maybe_first && program.program.referral_bonus_points > 0) {
                    needs
                        .profiles_of
                        .insert((tenant.to_owned(), purchase.customer.clone()));
                }
                for campaign in &campaigns {
                    if campaign.is_running_at(purchase.purchased_at)
                        && !campaign.conditions.segment_ids.is_empty()
                    {
                        needs
                            .segments_of
                            .entry((tenant.to_owned(), purchase.customer.clone()))
                            .or_default()
                            .extend(campaign.conditions.segment_ids.iter().cloned());
                    }
                }
            }
        }
        Ok(needs)
    }

    /// Applies a batch of one feed's events after its stored cursor, and moves the cursor to
    /// the last, in one transaction (run again from the start on a concurrent change). Events
    /// at or before the stored cursor were applied already and are left out.
    pub async fn apply_feed(&self, source: &str, items: &[FeedItem]) -> Result<BatchReport, LoyaltyError> {
        let Some(last) = items.iter().map(|item| item.position).max() else {
            return Ok(BatchReport::default());
        };
        for _ in 0..super::MAX_ATTEMPTS {
            let txn = self.store.begin_write().await?;
            let cursor = self.store.lock_feed(&txn, source).await?;
            let fresh: Vec<&FeedItem> = items.iter().filter(|item| item.position > cursor).collect();
            if fresh.is_empty() {
                txn.rollback().await.map_err(StoreError::from)?;
                return Ok(BatchReport::default());
            }
            let mut report = BatchReport::default();
            let mut touched: Vec<(String, StoredAccount)> = Vec::new();
            let mut by_tenant: BTreeMap<&str, Vec<&FeedItem>> = BTreeMap::new();
            for item in fresh {
                by_tenant.entry(item.tenant.as_str()).or_default().push(item);
            }
            let mut result = Ok(());
            let mut erased: Vec<(String, CustomerId)> = Vec::new();
            'tenants: for (tenant, items) in by_tenant {
                // An erasure renames rows under the accounts a run of events has loaded, so
                // the events before it are applied and saved first, and those after it load
                // afresh.
                for run in items.split_inclusive(|item| matches!(item.change, FeedChange::Erased { .. })) {
                    let (events, erasure) = match run.split_last() {
                        Some((last, before)) if matches!(last.change, FeedChange::Erased { .. }) => {
                            (before, Some(*last))
                        }
                        _ => (run, None),
                    };
                    match self.apply_tenant_items(&txn, tenant, events, &mut report).await {
                        Ok(accounts) => {
                            touched.extend(accounts.into_iter().map(|account| (tenant.to_owned(), account)))
                        }
                        Err(error) => {
                            result = Err(error);
                            break 'tenants;
                        }
                    }
                    let Some(FeedItem {
                        change: FeedChange::Erased { customer, pseudonym },
                        ..
                    }) = erasure
                    else {
                        continue;
                    };
                    match self.store.pseudonymize(&txn, tenant, customer, pseudonym).await {
                        Ok(true) => {
                            report.applied += 1;
                            erased.push((tenant.to_owned(), customer.clone()));
                            // Hot hashes of accounts a batch changed before the erasure
                            // would name the customer: they are written under the pseudonym
                            // by their next change.
                            touched.retain(|(_, account)| {
                                account.account().customers().iter().all(|held| *held != customer)
                            });
                        }
                        Ok(false) => report.replayed += 1,
                        Err(error) => {
                            result = Err(error);
                            break 'tenants;
                        }
                    }
                }
            }
            let result = match result {
                Ok(()) => self.store.set_feed_cursor(&txn, source, last).await,
                Err(error) => Err(error),
            };
            if retryable(result)?.is_none() {
                continue;
            }
            if !commit(txn).await? {
                continue;
            }
            self.events_committed();
            self.publish_hot_many(touched.iter().map(|(tenant, account)| (tenant.as_str(), account)))
                .await;
            for (tenant, customer) in &erased {
                self.forget_hot(tenant, customer).await;
            }
            return Ok(report);
        }
        Err(gave_up())
    }

    /// One tenant's part of a batch, in feed order; returns the accounts it changed, saved.
    async fn apply_tenant_items(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        tenant: &str,
        items: &[&FeedItem],
        report: &mut BatchReport,
    ) -> Result<Vec<StoredAccount>, StoreError> {
        let stored_program = self.store.program(txn, tenant).await?;
        let start_time = stored_program.as_ref().and_then(|stored| stored.start_time);
        let program = stored_program.map(|stored| stored.program);

        // Every customer the batch may touch, and every entry id it may make.
        let mut customers: BTreeSet<CustomerId> = BTreeSet::new();
        let mut entry_ids: Vec<EntryId> = Vec::new();
        let mut buyers: Vec<CustomerId> = Vec::new();
        for item in items {
            match &item.change {
                FeedChange::Purchase(purchase) => {
                    customers.insert(purchase.customer.clone());
                    buyers.push(purchase.customer.clone());
                    entry_ids.push(EntryId::accrual(&purchase.purchase_id));
                    entry_ids.push(EntryId::referral(&purchase.purchase_id));
                    if let Some(referrer) = purchase
                        .profile
                        .as_ref()
                        .and_then(|profile| profile.referrer.clone())
                    {
                        customers.insert(referrer);
                    }
                }
                FeedChange::Refund(refund) => {
                    customers.insert(refund.customer.clone());
                    entry_ids.push(EntryId::reversal(&refund.refund_id));
                }
                FeedChange::Merged { survivor, merged } => {
                    customers.insert(survivor.clone());
                    customers.extend(merged.iter().cloned());
                }
                FeedChange::Unmerged { survivor, restored } => {
                    customers.insert(survivor.clone());
                    customers.extend(restored.iter().cloned());
                }
                FeedChange::Nothing | FeedChange::Erased { .. } => {}
            }
        }
        let mut firsts = self.store.first_purchases(txn, tenant, &buyers).await?;
        let mut new_firsts: Vec<(CustomerId, String)> = Vec::new();
        let existing = self.store.existing_entries(txn, tenant, &entry_ids).await?;
        let customers: Vec<CustomerId> = customers.into_iter().collect();
        let holders = self.store.resolve_holders(txn, tenant, &customers).await?;
        let holder_ids: Vec<CustomerId> = holders
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut members = Members {
            accounts: self.store.load_accounts(txn, tenant, &holder_ids).await?,
            holders,
            changed: HashSet::new(),
            events: Vec::new(),
        };
        // Merged between the resolution and the lock: the batch runs again.
        if members
            .accounts
            .values()
            .any(|stored| stored.account().merged_into().is_some())
            || holder_ids
                .iter()
                .any(|holder| !members.accounts.contains_key(holder))
        {
            return Err(StoreError::Conflict(
                "an account merged while the batch loaded it".into(),
            ));
        }
        let mut campaigns = match &program {
            Some(_) => {
                let (from, to) = time_span(items.iter().filter_map(|item| match &item.change {
                    FeedChange::Purchase(purchase) => Some(purchase.purchased_at),
                    _ => None,
                }));
                self.store.campaigns_between(txn, tenant, from, to).await?
            }
            None => Vec::new(),
        };
        let mut awards: Vec<CampaignAward> = Vec::new();
        let at = now();

        for item in items {
            let applied = match (&item.change, &program) {
                (FeedChange::Purchase(purchase), program) => {
                    let first = firsts.entry(purchase.customer.clone()).or_insert_with(|| {
                        new_firsts.push((purchase.customer.clone(), purchase.purchase_id.clone()));
                        purchase.purchase_id.clone()
                    });
                    let is_first = *first == purchase.purchase_id;
                    match program {
                        None => Applied::Skipped,
                        // Bought before the program started.
                        Some(_) if start_time.is_some_and(|start| purchase.purchased_at < start) => {
                            Applied::Skipped
                        }
                        Some(_) if existing.contains(&EntryId::accrual(&purchase.purchase_id)) => {
                            Applied::Replayed
                        }
                        Some(program) => {
                            let earned =
                                members.earn_purchase(program, &campaigns, purchase, is_first, at)?;
                            if let Applied::Done {
                                awards: new_awards, ..
                            } = &earned
                            {
                                charge_in_memory(&mut campaigns, new_awards);
                                awards.extend(new_awards.iter().cloned());
                            }
                            if earned.is_done() && is_first {
                                let referral_id = EntryId::referral(&purchase.purchase_id);
                                if !existing.contains(&referral_id) {
                                    members.pay_referral(program, purchase, referral_id, at)?;
                                }
                            }
                            earned
                        }
                    }
                }
                (FeedChange::Refund(refund), Some(program)) => {
                    if existing.contains(&EntryId::reversal(&refund.refund_id)) {
                        Applied::Replayed
                    } else {
                        members
                            .reverse_refund(self, txn, tenant, program, refund, at)
                            .await?
                    }
                }
                (FeedChange::Refund(_), None) => Applied::Skipped,
                (FeedChange::Merged { survivor, merged }, Some(program)) => {
                    let mut done = Applied::Replayed;
                    for customer in merged {
                        if members.merge(program, survivor, customer, item.position, at)? {
                            done = Applied::done();
                        }
                    }
                    done
                }
                // Without a program no account exists, so there is nothing to move.
                (FeedChange::Merged { .. } | FeedChange::Unmerged { .. }, None) => Applied::Skipped,
                (FeedChange::Unmerged { survivor, restored }, Some(_)) => {
                    let mut done = Applied::Replayed;
                    for customer in restored {
                        if members.unmerge(survivor, customer, item.position, at)? {
                            done = Applied::done();
                        }
                    }
                    done
                }
                // Handled by apply_feed between runs of other events.
                (FeedChange::Nothing | FeedChange::Erased { .. }, _) => Applied::Skipped,
            };
            match applied {
                Applied::Done { .. } => report.applied += 1,
                Applied::Replayed => report.replayed += 1,
                Applied::Skipped => report.skipped += 1,
            }
        }

        let mut changed: Vec<StoredAccount> = members
            .accounts
            .into_iter()
            .filter(|(customer, _)| members.changed.contains(customer))
            .map(|(_, account)| account)
            .collect();
        {
            let mut views: Vec<&mut StoredAccount> = changed.iter_mut().collect();
            self.store.save_accounts(txn, tenant, &mut views).await?;
        }
        match self.store.charge_campaign_awards(txn, tenant, &awards).await {
            // Another writer used the budget since the batch read it: price the batch again.
            Err(StoreError::BudgetExhausted { campaign_id, .. }) => {
                return Err(StoreError::Conflict(format!(
                    "campaign {campaign_id}'s budget moved"
                )));
            }
            other => other?,
        }
        self.store
            .record_first_purchases(txn, tenant, &new_firsts)
            .await?;
        self.record_events(txn, tenant, &members.events).await?;
        // Accounts an unmerge restored or a merge emptied are saved; only live ones go hot.
        Ok(changed
            .into_iter()
            .filter(|stored| stored.account().merged_into().is_none())
            .collect())
    }
}

/// What applying one event did.
enum Applied {
    Done { awards: Vec<CampaignAward> },
    Replayed,
    Skipped,
}

impl Applied {
    fn done() -> Self {
        Self::Done { awards: Vec::new() }
    }

    fn is_done(&self) -> bool {
        matches!(self, Self::Done { .. })
    }
}

/// The accounts of one tenant's batch, by holder, and who changed.
struct Members {
    accounts: HashMap<CustomerId, StoredAccount>,
    /// Customer -> the customer whose account holds its points.
    holders: HashMap<CustomerId, CustomerId>,
    changed: HashSet<CustomerId>,
    /// What the changes announce, in order.
    events: Vec<LoyaltyEvent>,
}

impl Members {
    /// The account holding `customer`'s points, opened (unsaved) when it has none.
    fn holder_account(
        &mut self,
        program: &Program,
        customer: &CustomerId,
        at: DateTime<Utc>,
    ) -> &mut StoredAccount {
        let holder = self
            .holders
            .entry(customer.clone())
            .or_insert_with(|| customer.clone())
            .clone();
        self.accounts
            .entry(holder.clone())
            .or_insert_with(|| StoredAccount::new(Account::new(holder, program, at)))
    }

    fn apply(
        &mut self,
        program: &Program,
        customer: &CustomerId,
        command: Command,
    ) -> Result<Option<(CustomerId, Outcome)>, StoreError> {
        let at = command.at;
        let stored = self.holder_account(program, customer, at);
        let holder = stored.account().customer().clone();
        match stored.account_mut().apply(program, command) {
            Ok(outcome) => {
                if let Outcome::Applied { events, .. } = &outcome {
                    self.changed.insert(holder.clone());
                    self.events.extend(events.iter().cloned());
                }
                Ok(Some((holder, outcome)))
            }
            // A rule refused this event (e.g. more points than an entry may hold): it will
            // refuse it on every delivery, so it is skipped, not retried forever.
            Err(error) => {
                tracing::warn!(%customer, %error, "a feed event was refused by the loyalty rules; skipped");
                Ok(None)
            }
        }
    }

    fn earn_purchase(
        &mut self,
        program: &Program,
        campaigns: &[Campaign],
        purchase: &PurchaseFacts,
        is_first: bool,
        at: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        if purchase.currency_code != program.currency.code {
            return Ok(Applied::Skipped);
        }
        let tier = self
            .holder_account(program, &purchase.customer, at)
            .account()
            .tier()
            .map(str::to_owned);
        let context = earn_context(tier, purchase, is_first);
        let basket = Basket {
            currency_code: purchase.currency_code.clone(),
            // Interaction's line items carry no category, so the purchase is one line.
            lines: vec![BasketLine {
                amount_minor: purchase.amount_minor,
                category: None,
            }],
        };
        let quote = match quote_points(program, campaigns, &basket, &context) {
            Ok(quote) => quote,
            Err(error) => {
                tracing::warn!(purchase = %purchase.purchase_id, %error, "a purchase cannot earn; skipped");
                return Ok(Applied::Skipped);
            }
        };
        let holder = self
            .holders
            .get(&purchase.customer)
            .cloned()
            .unwrap_or_else(|| purchase.customer.clone());
        let origin = (holder != purchase.customer).then(|| purchase.customer.clone());
        let earn = quote.to_earn(&purchase.purchase_id, purchase.purchased_at, origin);
        let command = Command {
            entry_id: EntryId::accrual(&purchase.purchase_id),
            at,
            operation: Operation::Earn(earn),
        };
        Ok(match self.apply(program, &purchase.customer, command)? {
            Some((_, Outcome::Applied { .. })) => Applied::Done {
                awards: quote.campaign_awards,
            },
            Some((_, Outcome::Replayed { .. })) => Applied::Replayed,
            Some((_, Outcome::NothingDue)) | None => Applied::Skipped,
        })
    }

    fn pay_referral(
        &mut self,
        program: &Program,
        purchase: &PurchaseFacts,
        entry_id: EntryId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let referrer = purchase
            .profile
            .as_ref()
            .and_then(|profile| profile.referrer.as_ref());
        let Some(bonus) = referral_bonus(program, referrer, &purchase.customer, true) else {
            return Ok(());
        };
        let earn = bonus.to_earn(&purchase.customer, &purchase.purchase_id, purchase.purchased_at);
        let command = Command {
            entry_id,
            at,
            operation: Operation::Earn(earn),
        };
        self.apply(program, &bonus.referrer, command)?;
        Ok(())
    }

    /// Takes back what a refund's share of its purchase earned, from the account holding the
    /// accrual's lot. Rounding runs on the purchase's cumulative refunded amount, which the
    /// lot keeps (its qualifying spend, net of refunds), so partial refunds add up to exactly
    /// the accrual.
    async fn reverse_refund(
        &mut self,
        service: &Loyalty,
        txn: &sea_orm::DatabaseTransaction,
        tenant: &str,
        program: &Program,
        refund: &RefundFacts,
        at: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        if refund.currency_code != program.currency.code {
            return Ok(Applied::Skipped);
        }
        let accrual_id = EntryId::accrual(&refund.purchase_id);
        let stored = self.holder_account(program, &refund.customer, at);
        let Some(lot) = stored.account().lot(&LotId::of_entry(&accrual_id)).cloned() else {
            // The purchase earned nothing (before the program, another currency, 0 points).
            return Ok(Applied::Skipped);
        };
        let accrual = match stored.account().find_entry(&accrual_id).cloned() {
            Some(entry) => Some(entry),
            // An accrual made on a survivor whose lot an unmerge took back: the entry stayed in
            // the survivor's ledger.
            None => service.store.find_entry(txn, tenant, &accrual_id).await?,
        };
        let Some(EntryKind::Earn {
            source: EarnSource::Purchase { spend_minor, .. },
            ..
        }) = accrual.map(|entry| entry.kind)
        else {
            return Err(StoreError::corrupt(format!(
                "the lot of {accrual_id} has no purchase accrual"
            )));
        };
        let refunded_before = spend_minor - lot.qualifying_spend_minor;
        let refund_minor = refund.amount_minor.min(lot.qualifying_spend_minor).max(0);
        if refund_minor == 0 {
            return Ok(Applied::Skipped);
        }
        let points = reversal_points(lot.original_points, spend_minor, refunded_before, refund_minor)
            .map_err(|error| StoreError::corrupt(format!("reversal of {accrual_id}: {error}")))?
            .min(lot.original_points - lot.reversed_points);
        let command = Command {
            entry_id: EntryId::reversal(&refund.refund_id),
            at,
            operation: Operation::RefundReversal(RefundReversal {
                accrual_entry_id: accrual_id,
                points,
                refunded_spend_minor: refund_minor,
            }),
        };
        Ok(match self.apply(program, &refund.customer, command)? {
            Some((_, Outcome::Applied { .. })) => Applied::done(),
            Some((_, Outcome::Replayed { .. })) => Applied::Replayed,
            Some((_, Outcome::NothingDue)) | None => Applied::Skipped,
        })
    }

    /// Merges `merged`'s account into `survivor`'s, opening either if missing (so later
    /// events for the merged customer find the survivor). Returns whether anything changed.
    fn merge(
        &mut self,
        program: &Program,
        survivor: &CustomerId,
        merged: &CustomerId,
        position: i64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let survivor_holder = self
            .holder_account(program, survivor, at)
            .account()
            .customer()
            .clone();
        let merged_holder = self
            .holder_account(program, merged, at)
            .account()
            .customer()
            .clone();
        if survivor_holder == merged_holder {
            // Merged before (this event re-read, or an earlier merge through another customer).
            return Ok(false);
        }
        let Some(mut merged_account) = self.accounts.remove(&merged_holder) else {
            return Err(StoreError::corrupt(format!(
                "the account of {merged_holder} vanished"
            )));
        };
        let command = MergeCommand::from_event(&format!("{position}:{merged}"), at);
        let survivor_account = self
            .accounts
            .get_mut(&survivor_holder)
            .ok_or_else(|| StoreError::corrupt(format!("the account of {survivor_holder} vanished")))?;
        let outcome = merge(
            survivor_account.account_mut(),
            merged_account.account_mut(),
            program,
            command,
        );
        let applied = match outcome {
            Ok(MergeOutcome::Applied { events, .. }) => {
                self.events.extend(events);
                true
            }
            Ok(MergeOutcome::Replayed { .. }) => false,
            Err(error) => {
                tracing::warn!(%survivor, %merged, %error, "a merge was refused by the loyalty rules; skipped");
                false
            }
        };
        if applied {
            for customer in self.holders.values_mut() {
                if *customer == merged_holder {
                    *customer = survivor_holder.clone();
                }
            }
            self.holders
                .insert(merged_holder.clone(), survivor_holder.clone());
            self.changed.insert(merged_holder.clone());
            self.changed.insert(survivor_holder);
        }
        // The emptied account is saved with the survivor (it keeps its row, marked merged).
        self.accounts.insert(merged_holder, merged_account);
        Ok(applied)
    }

    /// Gives `restored` its account back from the survivor holding it. Returns whether
    /// anything changed.
    fn unmerge(
        &mut self,
        survivor: &CustomerId,
        restored: &CustomerId,
        position: i64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Some(holder) = self.holders.get(restored).cloned() else {
            // Never had an account, so never merged here.
            return Ok(false);
        };
        if holder == *restored {
            return Ok(false);
        }
        let Some(stored) = self.accounts.get_mut(&holder) else {
            return Err(StoreError::corrupt(format!("the account of {holder} vanished")));
        };
        let command = MergeCommand::from_event(&format!("{position}:{restored}:unmerge"), at);
        match unmerge(stored.account_mut(), restored, command) {
            Ok(UnmergeOutcome::Applied {
                restored: account,
                events,
                ..
            }) => {
                self.events.extend(events);
                let restored_id = account.customer().clone();
                let mut moved_back: Vec<CustomerId> = account.customers().into_iter().cloned().collect();
                moved_back.retain(|customer| customer != &restored_id);
                self.accounts
                    .insert(restored_id.clone(), StoredAccount::new(*account));
                for customer in moved_back {
                    self.holders.insert(customer, restored_id.clone());
                }
                self.holders.insert(restored_id.clone(), restored_id.clone());
                self.changed.insert(holder);
                self.changed.insert(restored_id);
                Ok(true)
            }
            Ok(UnmergeOutcome::Replayed { .. }) => Ok(false),
            Err(error) => {
                tracing::warn!(%survivor, %restored, %error, "an unmerge was refused by the loyalty rules; skipped");
                Ok(false)
            }
        }
    }
}

/// What the rules know of a purchase besides its basket.
fn earn_context(tier: Option<String>, purchase: &PurchaseFacts, is_first: bool) -> EarnContext {
    EarnContext {
        tier,
        purchased_at: purchase.purchased_at,
        // Days are UTC days until tenants have a time zone.
        purchase_local_date: purchase.purchased_at.date_naive(),
        channel: purchase.channel.clone(),
        segment_ids: purchase.segment_ids.clone(),
        is_first_purchase: is_first,
        birthday: purchase.profile.as_ref().and_then(|profile| profile.birthday),
    }
}

/// A quote with what it was priced for.
#[derive(Debug, Clone)]
pub struct QuoteView {
    pub quote: EarnQuote,
    pub tier: Option<String>,
    pub is_first_purchase: bool,
    pub currency_code: String,
}

impl Loyalty {
    /// What `basket` would earn `purchase.customer` at `purchase.purchased_at`, changing
    /// nothing: the rules a recorded purchase earns by, with the member's tier, first-purchase
    /// state and the campaigns running then.
    pub async fn quote_points(
        &self,
        tenant: &str,
        basket: &Basket,
        purchase: &PurchaseFacts,
    ) -> Result<QuoteView, LoyaltyError> {
        let db = self.store.db();
        let Some(program) = self.store.program(db, tenant).await? else {
            return Err(LoyaltyError::NoProgram);
        };
        let campaigns = self
            .store
            .campaigns_running(db, tenant, purchase.purchased_at)
            .await?;
        let tier = match self.store.resolve_holder(db, tenant, &purchase.customer).await? {
            Some(holder) => self
                .account(tenant, &holder)
                .await?
                .account
                .tier()
                .map(str::to_owned),
            None => None,
        };
        let is_first = !self
            .store
            .first_purchases(db, tenant, std::slice::from_ref(&purchase.customer))
            .await?
            .contains_key(&purchase.customer);
        let context = earn_context(tier.clone(), purchase, is_first);
        let quote = quote_points(&program.program, &campaigns, basket, &context)?;
        Ok(QuoteView {
            quote,
            tier,
            is_first_purchase: is_first,
            currency_code: program.program.currency.code,
        })
    }
}

/// Counts awards against the campaigns' budgets in memory, so later purchases of the batch
/// are priced against what is left.
fn charge_in_memory(campaigns: &mut [Campaign], awards: &[CampaignAward]) {
    for award in awards {
        if let Some(campaign) = campaigns
            .iter_mut()
            .find(|campaign| campaign.id == award.campaign_id)
        {
            campaign.awarded_points = campaign.awarded_points.saturating_add(award.points);
        }
    }
}

fn purchases_by_tenant(items: &[FeedItem]) -> BTreeMap<&str, Vec<&PurchaseFacts>> {
    let mut by_tenant: BTreeMap<&str, Vec<&PurchaseFacts>> = BTreeMap::new();
    for item in items {
        if let FeedChange::Purchase(purchase) = &item.change {
            by_tenant.entry(item.tenant.as_str()).or_default().push(purchase);
        }
    }
    by_tenant
}

/// The earliest and latest of `times` (now and now when there are none).
fn time_span(times: impl Iterator<Item = DateTime<Utc>>) -> (DateTime<Utc>, DateTime<Utc>) {
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for time in times {
        span = Some(match span {
            None => (time, time),
            Some((from, to)) => (from.min(time), to.max(time)),
        });
    }
    span.unwrap_or_else(|| {
        let at = now();
        (at, at)
    })
}
