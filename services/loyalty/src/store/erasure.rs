//! Erasure: a customer's loyalty records stay (the ledger is the tenant's books, and balances
//! of survivors depend on it) but no longer name the customer: every mention of its id
//! becomes the pseudonym customer-profile chose for it.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryOrder, QuerySelect};

use super::entities::{account, entry};
use super::{Store, StoreError, codec};
use crate::domain::CustomerId;

impl Store {
    /// Replaces `customer` with `pseudonym` everywhere in the tenant's loyalty records: its
    /// account row and the rows merged into it, lots it holds or earned, ledger entries (their
    /// account, the ids the jobs derived from it, and mentions inside them: origin, referral,
    /// merge counterpart), debts, cancellations and its first purchase. Returns whether
    /// anything named it (a re-delivered erasure finds nothing). Accounts it touches get a new
    /// revision, so a concurrent change to them runs again.
    pub async fn pseudonymize(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &CustomerId,
        pseudonym: &CustomerId,
    ) -> Result<bool, StoreError> {
        let (from, to) = (customer.as_str(), pseudonym.as_str());
        if from == to {
            return Ok(false);
        }
        // Lock the account and the one holding its points before anything changes.
        let holder = self.resolve_holder(txn, tenant, customer).await?;
        let mut locked = vec![customer.clone()];
        locked.extend(holder.clone());
        self.load_accounts(txn, tenant, &locked).await?;

        let mut changed = 0;
        for (table, column) in NAMING_COLUMNS {
            let rename = Query::update()
                .table(Alias::new(table))
                .value(Alias::new(column), to)
                .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant))
                .and_where(Expr::col(Alias::new(column)).eq(from))
                .to_owned();
            changed += txn.execute(&rename).await?.rows_affected();
        }
        // Ids the jobs made name the account (`maturity:{customer}:{time}`).
        changed += entry::Entity::update_many()
            .col_expr(
                entry::Column::EntryId,
                Func::cust(Alias::new("REPLACE"))
                    .arg(Expr::col(entry::Column::EntryId))
                    .arg(from)
                    .arg(to)
                    .into(),
            )
            .filter(entry::Column::TenantId.eq(tenant))
            .filter(entry::Column::EntryId.contains(from))
            .exec(txn)
            .await?
            .rows_affected;

        // Mentions inside entries and debts, wherever they are (a survivor's ledger, a
        // referrer's): found by the id's bytes in a pass over the tenant's rows (erasure is
        // rare; no index reaches inside encoded bodies), then decoded, renamed, written back.
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut page = entry::Entity::find().filter(entry::Column::TenantId.eq(tenant));
            if let Some(after) = &after {
                page = page.filter(entry::Column::EntryId.gt(after.as_str()));
            }
            let rows = page
                .order_by_asc(entry::Column::EntryId)
                .limit(SCAN_PAGE)
                .all(txn)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.entry_id.clone());
            entries.extend(rows.into_iter().filter(|row| mentions(&row.body, from)));
        }
        for row in entries {
            let (mut kind, movements) = codec::decode_entry_body(&row.body)?;
            kind.rename_customer(customer, pseudonym);
            let renamed = crate::domain::LedgerEntry {
                id: crate::domain::EntryId::from(row.entry_id.as_str()),
                customer: CustomerId::from(row.customer_id.as_str()),
                at: row.entry_time,
                kind,
                movements,
                balance_delta: row.balance_delta,
                pending_delta: row.pending_delta,
                debt_delta: row.debt_delta,
            };
            entry::Entity::update_many()
                .col_expr(
                    entry::Column::Body,
                    Expr::value(codec::encode_entry_body(&renamed)),
                )
                .filter(entry::Column::TenantId.eq(tenant))
                .filter(entry::Column::EntryId.eq(row.entry_id))
                .exec(txn)
                .await?;
            changed += 1;
        }
        let debtors = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant))
            .filter(account::Column::Debt.gt(0))
            .all(txn)
            .await?;
        for row in debtors.into_iter().filter(|row| mentions(&row.debts, from)) {
            let mut debts = codec::decode_debts(&row.debts)?;
            if let Some(owed) = debts.remove(customer) {
                *debts.entry(pseudonym.clone()).or_insert(0) += owed;
            }
            account::Entity::update_many()
                .col_expr(account::Column::Debts, Expr::value(codec::encode_debts(&debts)))
                .filter(account::Column::TenantId.eq(tenant))
                .filter(account::Column::CustomerId.eq(row.customer_id))
                .exec(txn)
                .await?;
            changed += 1;
        }

        // Whoever held or was the customer changed under any reader.
        let mut touched = vec![to.to_owned()];
        touched.extend(
            holder
                .filter(|holder| holder != customer)
                .map(|holder| holder.as_str().to_owned()),
        );
        account::Entity::update_many()
            .col_expr(
                account::Column::Revision,
                Expr::col(account::Column::Revision).add(1),
            )
            .filter(account::Column::TenantId.eq(tenant))
            .filter(account::Column::CustomerId.is_in(touched))
            .exec(txn)
            .await?;
        Ok(changed > 0)
    }
}

/// The columns that name a customer, by table.
const NAMING_COLUMNS: [(&str, &str); 7] = [
    ("accounts", "customer_id"),
    ("accounts", "merged_into"),
    ("lots", "customer_id"),
    ("lots", "origin_customer"),
    ("ledger_entries", "customer_id"),
    ("redemption_cancellations", "customer_id"),
    ("first_purchases", "customer_id"),
];

/// Rows per page of the scan for mentions.
const SCAN_PAGE: u64 = 1000;

/// Whether encoded bytes hold `id` (ids are stored as their UTF-8 bytes).
fn mentions(bytes: &[u8], id: &str) -> bool {
    let needle = id.as_bytes();
    !needle.is_empty() && bytes.windows(needle.len()).any(|window| window == needle)
}
