use sea_orm_migration::prelude::*;

/// Who referred whom, from customer-profile's facts: a customer's referral value is the spend
/// of the customers they referred, so the referrer is rescored when those customers buy.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Referrals {
    Table,
    TenantId,
    CustomerId,
    ReferrerId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Referrals::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Referrals::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Referrals::CustomerId).uuid().not_null())
                    .col(ColumnDef::new(Referrals::ReferrerId).uuid().not_null())
                    .primary_key(
                        Index::create()
                            .col(Referrals::TenantId)
                            .col(Referrals::CustomerId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("referrals_by_referrer")
                    .table(Referrals::Table)
                    .col(Referrals::TenantId)
                    .col(Referrals::ReferrerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Referrals::Table).to_owned())
            .await
    }
}
