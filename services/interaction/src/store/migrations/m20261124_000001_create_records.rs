use sea_orm_migration::prelude::*;

/// Touchpoint records (touchpoints, purchases, refunds, feedback) in one table, so the timeline
/// is one indexed read; callbacks (mutable, queued per agent); and what the service keeps of
/// customer-profile's events: its cursor per tenant and the merges it has applied.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Records {
    Table,
    TenantId,
    Id,
    RecordKind,
    CustomerId,
    OriginCustomerId,
    ParentId,
    ExternalKey,
    OccurTime,
    Channel,
    Form,
    Currency,
    AmountMinor,
    RefundedMinor,
    Body,
    CreateTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum Callbacks {
    Table,
    TenantId,
    Id,
    CustomerId,
    OriginCustomerId,
    Assignee,
    DueTime,
    State,
    Revision,
    Body,
    CreateTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomerEventCursors {
    Table,
    TenantId,
    Position,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomerAliases {
    Table,
    TenantId,
    MergedId,
    SurvivorId,
}

fn tenant(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(64).not_null().to_owned()
}

fn time(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

async fn index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: Vec<T>,
    unique: bool,
) -> Result<(), DbErr> {
    let mut index = Index::create().name(name).table(table).if_not_exists().to_owned();
    if unique {
        index.unique();
    }
    for column in columns {
        index.col(column);
    }
    manager.create_index(index).await
}

async fn partial_index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: Vec<T>,
    condition: SimpleExpr,
) -> Result<(), DbErr> {
    let mut index = Index::create().name(name).table(table).if_not_exists().to_owned();
    for column in columns {
        index.col(column);
    }
    index.and_where(condition);
    manager.create_index(index).await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Records::Table)
                    .if_not_exists()
                    .col(tenant(Records::TenantId))
                    .col(ColumnDef::new(Records::Id).uuid().not_null())
                    .col(ColumnDef::new(Records::RecordKind).string_len(16).not_null())
                    .col(ColumnDef::new(Records::CustomerId).uuid().not_null())
                    .col(ColumnDef::new(Records::OriginCustomerId).uuid().not_null())
                    .col(ColumnDef::new(Records::ParentId).uuid().null())
                    .col(ColumnDef::new(Records::ExternalKey).string_len(200).null())
                    .col(time(Records::OccurTime))
                    .col(ColumnDef::new(Records::Channel).integer().not_null())
                    .col(ColumnDef::new(Records::Form).integer().not_null())
                    .col(ColumnDef::new(Records::Currency).string_len(3).null())
                    .col(ColumnDef::new(Records::AmountMinor).big_integer().null())
                    .col(ColumnDef::new(Records::RefundedMinor).big_integer().not_null())
                    .col(ColumnDef::new(Records::Body).blob().not_null())
                    .col(time(Records::CreateTime))
                    .primary_key(Index::create().col(Records::TenantId).col(Records::Id))
                    .to_owned(),
            )
            .await?;
        use Records as R;
        // NULL keys never collide, so records without an external reference are all kept.
        index(
            manager,
            "records_by_external_key",
            R::Table,
            vec![R::TenantId, R::RecordKind, R::ExternalKey],
            true,
        )
        .await?;
        index(
            manager,
            "records_timeline",
            R::Table,
            vec![R::TenantId, R::CustomerId, R::OccurTime, R::Id],
            false,
        )
        .await?;
        // Per-kind lists read the timeline index and filter on the kind: a third index on every
        // insert costs more than the filter on a customer's records.
        // Partial: only refunds have a parent, and only re-keyed rows (merged, or restored after
        // an unmerge) differ from their origin, which is all an unmerge looks for; rows that
        // need neither index cost nothing to insert.
        partial_index(
            manager,
            "records_by_parent",
            R::Table,
            vec![R::TenantId, R::ParentId, R::OccurTime, R::Id],
            Expr::col(R::ParentId).is_not_null(),
        )
        .await?;
        partial_index(
            manager,
            "records_rekeyed_by_origin",
            R::Table,
            vec![R::TenantId, R::OriginCustomerId],
            Expr::col(R::OriginCustomerId).ne(Expr::col(R::CustomerId)),
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Callbacks::Table)
                    .if_not_exists()
                    .col(tenant(Callbacks::TenantId))
                    .col(ColumnDef::new(Callbacks::Id).uuid().not_null())
                    .col(ColumnDef::new(Callbacks::CustomerId).uuid().not_null())
                    .col(ColumnDef::new(Callbacks::OriginCustomerId).uuid().not_null())
                    .col(ColumnDef::new(Callbacks::Assignee).string_len(200).not_null())
                    .col(time(Callbacks::DueTime))
                    .col(ColumnDef::new(Callbacks::State).string_len(16).not_null())
                    .col(ColumnDef::new(Callbacks::Revision).big_integer().not_null())
                    .col(ColumnDef::new(Callbacks::Body).blob().not_null())
                    .col(time(Callbacks::CreateTime))
                    .primary_key(Index::create().col(Callbacks::TenantId).col(Callbacks::Id))
                    .to_owned(),
            )
            .await?;
        use Callbacks as C;
        index(
            manager,
            "callbacks_due",
            C::Table,
            vec![C::TenantId, C::Assignee, C::State, C::DueTime, C::Id],
            false,
        )
        .await?;
        index(
            manager,
            "callbacks_by_customer",
            C::Table,
            vec![C::TenantId, C::CustomerId, C::DueTime, C::Id],
            false,
        )
        .await?;
        index(
            manager,
            "callbacks_by_origin",
            C::Table,
            vec![C::TenantId, C::OriginCustomerId],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(CustomerEventCursors::Table)
                    .if_not_exists()
                    .col(tenant(CustomerEventCursors::TenantId).primary_key())
                    .col(
                        ColumnDef::new(CustomerEventCursors::Position)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CustomerAliases::Table)
                    .if_not_exists()
                    .col(tenant(CustomerAliases::TenantId))
                    .col(ColumnDef::new(CustomerAliases::MergedId).uuid().not_null())
                    .col(ColumnDef::new(CustomerAliases::SurvivorId).uuid().not_null())
                    .primary_key(
                        Index::create()
                            .col(CustomerAliases::TenantId)
                            .col(CustomerAliases::MergedId),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
