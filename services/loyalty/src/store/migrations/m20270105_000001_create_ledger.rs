use sea_orm_migration::prelude::*;

/// The loyalty ledger: each tenant's program, members' accounts (one row per customer, merged
/// ones included), their lots, the append-only ledger entries, which redemptions were
/// cancelled, the rewards catalogue and the campaigns. Every key leads with `tenant_id`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Programs {
    Table,
    TenantId,
    Body,
    Revision,
    UpdateTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum Accounts {
    Table,
    TenantId,
    CustomerId,
    MergedInto,
    MergePosition,
    Tier,
    TierEvaluatedAt,
    Debts,
    Balance,
    Pending,
    Debt,
    LifetimePoints,
    EntryCount,
    Revision,
}

#[derive(DeriveIden, Clone, Copy)]
enum Lots {
    Table,
    TenantId,
    LotId,
    CustomerId,
    OriginCustomer,
    Source,
    EarnedAt,
    MaturesAt,
    ExpiresAt,
    State,
    OriginalPoints,
    RemainingPoints,
    ExpiredPoints,
    ReversedPoints,
    QualifyingSpendMinor,
}

#[derive(DeriveIden, Clone, Copy)]
enum LedgerEntries {
    Table,
    TenantId,
    EntryId,
    CustomerId,
    Seq,
    EntryTime,
    Kind,
    BalanceDelta,
    PendingDelta,
    DebtDelta,
    RewardId,
    RewardQuantity,
    Body,
}

#[derive(DeriveIden, Clone, Copy)]
enum RedemptionCancellations {
    Table,
    TenantId,
    RedemptionEntryId,
    CustomerId,
    CancellationEntryId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Rewards {
    Table,
    TenantId,
    RewardId,
    Name,
    PointsCost,
    Stock,
    PerMemberLimit,
    Revision,
}

#[derive(DeriveIden, Clone, Copy)]
enum Campaigns {
    Table,
    TenantId,
    CampaignId,
    StartsAt,
    EndsAt,
    Conditions,
    BonusKind,
    BonusValue,
    BudgetPoints,
    AwardedPoints,
    Revision,
}

fn tenant(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(64).not_null().to_owned()
}

/// Ids the callers choose (customers, entries, lots, rewards, campaigns): up to 256 bytes in
/// the domain, more for the lots a cancellation derives; text has no length to outgrow.
fn id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).text().not_null().to_owned()
}

fn points(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).big_integer().not_null().to_owned()
}

fn time(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Programs::Table)
                    .if_not_exists()
                    .col(tenant(Programs::TenantId))
                    // The program's settings, encoded (store::codec::ProgramPb).
                    .col(ColumnDef::new(Programs::Body).blob().not_null())
                    .col(points(Programs::Revision))
                    .col(time(Programs::UpdateTime))
                    .primary_key(Index::create().col(Programs::TenantId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .if_not_exists()
                    .col(tenant(Accounts::TenantId))
                    .col(id(Accounts::CustomerId))
                    // The survivor this customer was merged into (its parent in the tree of
                    // absorbed accounts); NULL for a live account.
                    .col(ColumnDef::new(Accounts::MergedInto).text().null())
                    // Its place among the survivor's absorbed accounts (merge order).
                    .col(ColumnDef::new(Accounts::MergePosition).integer().not_null())
                    .col(ColumnDef::new(Accounts::Tier).text().null())
                    .col(time(Accounts::TierEvaluatedAt))
                    // Debt per origin customer, encoded (store::codec::DebtsPb).
                    .col(ColumnDef::new(Accounts::Debts).blob().not_null())
                    // Kept for reads and reports; the lots and the ledger are the truth.
                    .col(points(Accounts::Balance))
                    .col(points(Accounts::Pending))
                    .col(points(Accounts::Debt))
                    .col(points(Accounts::LifetimePoints))
                    // Entries in this customer's ledger: the next entry's `seq`.
                    .col(points(Accounts::EntryCount))
                    .col(points(Accounts::Revision))
                    .primary_key(Index::create().col(Accounts::TenantId).col(Accounts::CustomerId))
                    .to_owned(),
            )
            .await?;
        // Loading an account walks down to the accounts merged into it.
        manager
            .create_index(
                Index::create()
                    .name("accounts_by_survivor")
                    .table(Accounts::Table)
                    .col(Accounts::TenantId)
                    .col(Accounts::MergedInto)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Lots::Table)
                    .if_not_exists()
                    .col(tenant(Lots::TenantId))
                    .col(id(Lots::LotId))
                    // The account holding the lot now (a survivor after a merge).
                    .col(id(Lots::CustomerId))
                    .col(id(Lots::OriginCustomer))
                    .col(ColumnDef::new(Lots::Source).string_len(16).not_null())
                    .col(time(Lots::EarnedAt))
                    .col(time(Lots::MaturesAt))
                    .col(ColumnDef::new(Lots::ExpiresAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Lots::State).string_len(16).not_null())
                    .col(points(Lots::OriginalPoints))
                    .col(points(Lots::RemainingPoints))
                    .col(points(Lots::ExpiredPoints))
                    .col(points(Lots::ReversedPoints))
                    .col(points(Lots::QualifyingSpendMinor))
                    .primary_key(Index::create().col(Lots::TenantId).col(Lots::LotId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("lots_by_holder")
                    .table(Lots::Table)
                    .col(Lots::TenantId)
                    .col(Lots::CustomerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // The expiry job and "points expiring soon" page through a tenant's lots by expiry.
        manager
            .create_index(
                Index::create()
                    .name("lots_by_expiry")
                    .table(Lots::Table)
                    .col(Lots::TenantId)
                    .col(Lots::ExpiresAt)
                    .col(Lots::LotId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // The maturity job pages through pending lots by maturity.
        manager
            .create_index(
                Index::create()
                    .name("lots_by_maturity")
                    .table(Lots::Table)
                    .col(Lots::TenantId)
                    .col(Lots::State)
                    .col(Lots::MaturesAt)
                    .col(Lots::LotId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(LedgerEntries::Table)
                    .if_not_exists()
                    .col(tenant(LedgerEntries::TenantId))
                    // Unique per tenant forever: the final guard against applying an
                    // operation twice.
                    .col(id(LedgerEntries::EntryId))
                    // The ledger the entry is in (entries never move, even with a merge).
                    .col(id(LedgerEntries::CustomerId))
                    // Its position in that ledger, from 0.
                    .col(ColumnDef::new(LedgerEntries::Seq).big_integer().not_null())
                    .col(time(LedgerEntries::EntryTime))
                    .col(ColumnDef::new(LedgerEntries::Kind).string_len(32).not_null())
                    .col(points(LedgerEntries::BalanceDelta))
                    .col(points(LedgerEntries::PendingDelta))
                    .col(points(LedgerEntries::DebtDelta))
                    // A redemption's reward, for per-member limits.
                    .col(ColumnDef::new(LedgerEntries::RewardId).text().null())
                    .col(ColumnDef::new(LedgerEntries::RewardQuantity).big_integer().null())
                    // The kind's data and the lot movements, encoded (store::codec::EntryBodyPb).
                    .col(ColumnDef::new(LedgerEntries::Body).blob().not_null())
                    .primary_key(
                        Index::create()
                            .col(LedgerEntries::TenantId)
                            .col(LedgerEntries::EntryId),
                    )
                    .to_owned(),
            )
            .await?;
        // One entry per position: two writers appending to one ledger from the same read
        // cannot both succeed. The name contains "seq", which is how a violation of it is
        // told apart from a duplicate entry id.
        manager
            .create_index(
                Index::create()
                    .name("ledger_entries_customer_seq")
                    .table(LedgerEntries::Table)
                    .col(LedgerEntries::TenantId)
                    .col(LedgerEntries::CustomerId)
                    .col(LedgerEntries::Seq)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RedemptionCancellations::Table)
                    .if_not_exists()
                    .col(tenant(RedemptionCancellations::TenantId))
                    // A redemption is cancelled at most once.
                    .col(id(RedemptionCancellations::RedemptionEntryId))
                    // The ledger holding the redemption.
                    .col(id(RedemptionCancellations::CustomerId))
                    .col(id(RedemptionCancellations::CancellationEntryId))
                    .primary_key(
                        Index::create()
                            .col(RedemptionCancellations::TenantId)
                            .col(RedemptionCancellations::RedemptionEntryId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("redemption_cancellations_by_customer")
                    .table(RedemptionCancellations::Table)
                    .col(RedemptionCancellations::TenantId)
                    .col(RedemptionCancellations::CustomerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Rewards::Table)
                    .if_not_exists()
                    .col(tenant(Rewards::TenantId))
                    .col(id(Rewards::RewardId))
                    .col(ColumnDef::new(Rewards::Name).text().not_null())
                    .col(points(Rewards::PointsCost))
                    // NULL: unlimited. Only ever lowered by `stock - q WHERE stock >= q`.
                    .col(ColumnDef::new(Rewards::Stock).big_integer().null())
                    .col(ColumnDef::new(Rewards::PerMemberLimit).big_integer().null())
                    .col(points(Rewards::Revision))
                    .primary_key(Index::create().col(Rewards::TenantId).col(Rewards::RewardId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Campaigns::Table)
                    .if_not_exists()
                    .col(tenant(Campaigns::TenantId))
                    .col(id(Campaigns::CampaignId))
                    .col(time(Campaigns::StartsAt))
                    .col(time(Campaigns::EndsAt))
                    // Encoded (store::codec::ConditionsPb).
                    .col(ColumnDef::new(Campaigns::Conditions).blob().not_null())
                    .col(ColumnDef::new(Campaigns::BonusKind).string_len(32).not_null())
                    .col(points(Campaigns::BonusValue))
                    // NULL: unlimited. Awards only grow by a guarded update.
                    .col(ColumnDef::new(Campaigns::BudgetPoints).big_integer().null())
                    .col(points(Campaigns::AwardedPoints))
                    .col(points(Campaigns::Revision))
                    .primary_key(
                        Index::create()
                            .col(Campaigns::TenantId)
                            .col(Campaigns::CampaignId),
                    )
                    .to_owned(),
            )
            .await?;
        // Quoting reads the campaigns running at the purchase time.
        manager
            .create_index(
                Index::create()
                    .name("campaigns_by_end")
                    .table(Campaigns::Table)
                    .col(Campaigns::TenantId)
                    .col(Campaigns::EndsAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Campaigns::Table.into_iden(),
            Rewards::Table.into_iden(),
            RedemptionCancellations::Table.into_iden(),
            LedgerEntries::Table.into_iden(),
            Lots::Table.into_iden(),
            Accounts::Table.into_iden(),
            Programs::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
