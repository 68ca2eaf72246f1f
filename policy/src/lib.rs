//! Policy model and nftables rendering. Built by the policy issue.
