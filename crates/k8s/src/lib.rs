/*!
gpuslice in Kubernetes: the Dynamic Resource Allocation driver, [`dra`].

Kubernetes asks for devices in two ways. The device plugin API (`gpuslice device-plugin`,
in the command's crate for now) advertises N equal slices of each GPU. Dynamic Resource
Allocation (`resource.k8s.io/v1`, Kubernetes 1.34+) lets a pod ask for part of a device by
its capacities: "4Gi of memory and 30% of the time". The driver publishes each GPU with
those capacities, the scheduler bin-packs claims against them, and the kubelet asks the
driver to prepare each claim on the node: that is where gpuslice makes the tenant whose
quota enforces what the scheduler granted.

Everything the driver knows between calls is in the ledger ([`gpuslice_ledger`]): a claim's
tenant, its quota and a record of what was granted. A restarted driver, or a restarted
kubelet, finds it there.
*/

#![deny(missing_docs)]

pub mod dra;
