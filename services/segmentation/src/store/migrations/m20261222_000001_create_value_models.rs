use sea_orm_migration::prelude::*;

/// Customer-value models: every fit a tenant made, as a version. At most one per tenant is
/// ACTIVE (the service keeps that under the tenant lock); the others are kept so a fit can be
/// compared with the ones before it.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum ValueModels {
    Table,
    TenantId,
    Version,
    State,
    Body,
    CreateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ValueModels::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ValueModels::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(ValueModels::Version).big_integer().not_null())
                    .col(ColumnDef::new(ValueModels::State).integer().not_null())
                    // The encoded crm.segmentation.v1.ValueModel.
                    .col(ColumnDef::new(ValueModels::Body).blob().not_null())
                    .col(
                        ColumnDef::new(ValueModels::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ValueModels::TenantId)
                            .col(ValueModels::Version),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ValueModels::Table).to_owned())
            .await
    }
}
