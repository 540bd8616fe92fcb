"""What produces dirty pages: workloads and the vCPUs that run them."""
