use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Customers {
    Table,
    TenantId,
    Id,
    Kind,
    DisplayName,
    CreateTime,
    UpdateTime,
    Revision,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Customers::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Customers::Id).uuid().not_null())
                    .col(ColumnDef::new(Customers::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(Customers::DisplayName).string_len(800).not_null())
                    .col(
                        ColumnDef::new(Customers::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Customers::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Customers::Revision).big_integer().not_null())
                    .primary_key(Index::create().col(Customers::TenantId).col(Customers::Id))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Customers::Table).to_owned())
            .await
    }
}
