use sea_orm_migration::prelude::*;

/// Dynamic segments: the profile facts expressions read (tags, attributes, kind, level), the
/// segments, and their current members. Entries and exits go to the outbox (its own
/// migration), written in the same transaction as the membership change.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum CustomerFacts {
    Table,
    TenantId,
    CustomerId,
    Body,
}

#[derive(DeriveIden, Clone, Copy)]
enum Segments {
    Table,
    TenantId,
    SegmentId,
    DisplayName,
    Description,
    Expression,
    Revision,
    MemberCount,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum SegmentMembers {
    Table,
    TenantId,
    SegmentId,
    CustomerId,
    EnterTime,
}

fn tenant(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(64).not_null().to_owned()
}

fn uuid(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).uuid().not_null().to_owned()
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
                    .table(CustomerFacts::Table)
                    .if_not_exists()
                    .col(tenant(CustomerFacts::TenantId))
                    .col(uuid(CustomerFacts::CustomerId))
                    .col(ColumnDef::new(CustomerFacts::Body).blob().not_null())
                    .primary_key(
                        Index::create()
                            .col(CustomerFacts::TenantId)
                            .col(CustomerFacts::CustomerId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Segments::Table)
                    .if_not_exists()
                    .col(tenant(Segments::TenantId))
                    .col(uuid(Segments::SegmentId))
                    .col(ColumnDef::new(Segments::DisplayName).text().not_null())
                    .col(ColumnDef::new(Segments::Description).text().not_null())
                    .col(ColumnDef::new(Segments::Expression).text().not_null())
                    .col(ColumnDef::new(Segments::Revision).big_integer().not_null())
                    .col(ColumnDef::new(Segments::MemberCount).big_integer().not_null())
                    .col(time(Segments::CreateTime))
                    .col(time(Segments::UpdateTime))
                    .primary_key(Index::create().col(Segments::TenantId).col(Segments::SegmentId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SegmentMembers::Table)
                    .if_not_exists()
                    .col(tenant(SegmentMembers::TenantId))
                    .col(uuid(SegmentMembers::SegmentId))
                    .col(uuid(SegmentMembers::CustomerId))
                    .col(time(SegmentMembers::EnterTime))
                    .primary_key(
                        Index::create()
                            .col(SegmentMembers::TenantId)
                            .col(SegmentMembers::SegmentId)
                            .col(SegmentMembers::CustomerId),
                    )
                    .to_owned(),
            )
            .await?;
        // Rescoring a customer reads the segments they are in.
        manager
            .create_index(
                Index::create()
                    .name("segment_members_by_customer")
                    .table(SegmentMembers::Table)
                    .col(SegmentMembers::TenantId)
                    .col(SegmentMembers::CustomerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SegmentMembers::Table.into_iden(),
            Segments::Table.into_iden(),
            CustomerFacts::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
