//! `BatchGetCustomers` of `size` names a call against `GetCustomer` of one name a call, both
//! counted in names read per second: what a follower (segmentation, loyalty) gains by asking
//! for its batch's customers at once.

use std::sync::Arc;

use crm_proto::customerprofile_v1 as pb;

use crate::driver::{Caller, Step};
use crate::workloads::{ProfileClient, Tenant, describe_status};

/// Reads `names` round robin, one per call (the baseline).
pub struct GetCaller {
    client: ProfileClient,
    tenant: Tenant,
    names: Arc<Vec<String>>,
    index: usize,
    stride: usize,
}

impl GetCaller {
    pub fn new(
        client: ProfileClient,
        tenant: Tenant,
        names: Arc<Vec<String>>,
        index: usize,
        stride: usize,
    ) -> Self {
        GetCaller {
            client,
            tenant,
            names,
            index,
            stride: stride.max(1),
        }
    }
}

impl Caller for GetCaller {
    async fn call(&mut self, seq: u64) -> Step {
        if self.names.is_empty() {
            return Step::Exhausted;
        }
        let position = (self.index as u64 + seq * self.stride as u64) % self.names.len() as u64;
        let name = self.names[position as usize].clone();
        let request = self.tenant.request(pb::GetCustomerRequest { name: name.clone() });
        match self.client.get_customer(request).await {
            Ok(response) if response.get_ref().name == name => Step::Ok,
            Ok(response) => Step::Failed(format!(
                "GetCustomer {name}: answered {}",
                response.get_ref().name
            )),
            Err(status) => Step::Failed(describe_status("GetCustomer", &name, &status)),
        }
    }
}

/// Reads `size` consecutive names of `names` per call, round robin.
pub struct BatchCaller {
    client: ProfileClient,
    tenant: Tenant,
    names: Arc<Vec<String>>,
    size: usize,
    index: usize,
    stride: usize,
}

impl BatchCaller {
    pub fn new(
        client: ProfileClient,
        tenant: Tenant,
        names: Arc<Vec<String>>,
        size: usize,
        index: usize,
        stride: usize,
    ) -> Self {
        BatchCaller {
            client,
            tenant,
            names,
            size: size.max(1),
            index,
            stride: stride.max(1),
        }
    }
}

impl Caller for BatchCaller {
    async fn call(&mut self, seq: u64) -> Step {
        let count = self.names.len();
        if count == 0 {
            return Step::Exhausted;
        }
        let start = ((self.index as u64 + seq * self.stride as u64) * self.size as u64) % count as u64;
        let names: Vec<String> = (0..self.size)
            .map(|offset| self.names[(start as usize + offset) % count].clone())
            .collect();
        let request = self
            .tenant
            .request(pb::BatchGetCustomersRequest { names: names.clone() });
        match self.client.batch_get_customers(request).await {
            Ok(response) => {
                let found = &response.get_ref().customers;
                if found.len() == names.len()
                    && found
                        .iter()
                        .zip(&names)
                        .all(|(customer, name)| customer.name == *name)
                {
                    Step::Ok
                } else {
                    Step::Failed(format!(
                        "BatchGetCustomers: {} answers for {} names",
                        found.len(),
                        names.len()
                    ))
                }
            }
            Err(status) => Step::Failed(describe_status("BatchGetCustomers", &names[0], &status)),
        }
    }
}
