use sea_orm_migration::prelude::*;

/// What segmentation keeps: per-origin purchase aggregates (so an unmerge can split them back),
/// the merges applied, each customer's scores, the tenant's settings and cut-offs, score runs,
/// erased customers, and its cursor in each feed it follows.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum FeedCursors {
    Table,
    Source,
    Position,
}

#[derive(DeriveIden, Clone, Copy)]
enum OriginAggregates {
    Table,
    TenantId,
    OriginId,
    OwnerId,
    Days,
    OtherCurrencyEvents,
}

#[derive(DeriveIden, Clone, Copy)]
enum MergeParents {
    Table,
    TenantId,
    ChildId,
    ParentId,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomerScores {
    Table,
    TenantId,
    CustomerId,
    Stage,
    EndedPattern,
    RScore,
    FScore,
    Segment,
    ValueClass,
    AbcClass,
    MonetaryMinor,
    Revision,
    Body,
    UpdateTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum TenantState {
    Table,
    TenantId,
    Settings,
    SettingsRevision,
    ScoreRevision,
    Cutoffs,
    CutoffsTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum ScoreRuns {
    Table,
    TenantId,
    Id,
    State,
    Body,
    CreateTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum ErasedCustomers {
    Table,
    TenantId,
    CustomerId,
}

fn tenant(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(64).not_null().to_owned()
}

fn uuid(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).uuid().not_null().to_owned()
}

fn integer(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).integer().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(FeedCursors::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(FeedCursors::Source)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(FeedCursors::Position).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OriginAggregates::Table)
                    .if_not_exists()
                    .col(tenant(OriginAggregates::TenantId))
                    .col(uuid(OriginAggregates::OriginId))
                    .col(uuid(OriginAggregates::OwnerId))
                    .col(ColumnDef::new(OriginAggregates::Days).blob().not_null())
                    .col(
                        ColumnDef::new(OriginAggregates::OtherCurrencyEvents)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(OriginAggregates::TenantId)
                            .col(OriginAggregates::OriginId),
                    )
                    .to_owned(),
            )
            .await?;
        // A customer's scores read every origin it owns; a score run reads them owner by owner.
        manager
            .create_index(
                Index::create()
                    .name("origin_aggregates_by_owner")
                    .table(OriginAggregates::Table)
                    .col(OriginAggregates::TenantId)
                    .col(OriginAggregates::OwnerId)
                    .col(OriginAggregates::OriginId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MergeParents::Table)
                    .if_not_exists()
                    .col(tenant(MergeParents::TenantId))
                    .col(uuid(MergeParents::ChildId))
                    .col(uuid(MergeParents::ParentId))
                    .primary_key(
                        Index::create()
                            .col(MergeParents::TenantId)
                            .col(MergeParents::ChildId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CustomerScores::Table)
                    .if_not_exists()
                    .col(tenant(CustomerScores::TenantId))
                    .col(uuid(CustomerScores::CustomerId))
                    .col(integer(CustomerScores::Stage))
                    .col(integer(CustomerScores::EndedPattern))
                    .col(integer(CustomerScores::RScore))
                    .col(integer(CustomerScores::FScore))
                    .col(integer(CustomerScores::Segment))
                    .col(integer(CustomerScores::ValueClass))
                    .col(integer(CustomerScores::AbcClass))
                    .col(
                        ColumnDef::new(CustomerScores::MonetaryMinor)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(CustomerScores::Revision).big_integer().not_null())
                    .col(ColumnDef::new(CustomerScores::Body).blob().not_null())
                    .col(
                        ColumnDef::new(CustomerScores::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(CustomerScores::TenantId)
                            .col(CustomerScores::CustomerId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TenantState::Table)
                    .if_not_exists()
                    .col(tenant(TenantState::TenantId).primary_key())
                    .col(ColumnDef::new(TenantState::Settings).blob().not_null())
                    .col(
                        ColumnDef::new(TenantState::SettingsRevision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantState::ScoreRevision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(TenantState::Cutoffs).blob().null())
                    .col(
                        ColumnDef::new(TenantState::CutoffsTime)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ScoreRuns::Table)
                    .if_not_exists()
                    .col(tenant(ScoreRuns::TenantId))
                    .col(uuid(ScoreRuns::Id))
                    .col(integer(ScoreRuns::State))
                    .col(ColumnDef::new(ScoreRuns::Body).blob().not_null())
                    .col(
                        ColumnDef::new(ScoreRuns::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(Index::create().col(ScoreRuns::TenantId).col(ScoreRuns::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ErasedCustomers::Table)
                    .if_not_exists()
                    .col(tenant(ErasedCustomers::TenantId))
                    .col(uuid(ErasedCustomers::CustomerId))
                    .primary_key(
                        Index::create()
                            .col(ErasedCustomers::TenantId)
                            .col(ErasedCustomers::CustomerId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            FeedCursors::Table.into_iden(),
            OriginAggregates::Table.into_iden(),
            MergeParents::Table.into_iden(),
            CustomerScores::Table.into_iden(),
            TenantState::Table.into_iden(),
            ScoreRuns::Table.into_iden(),
            ErasedCustomers::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
