"""The ElasticEPCluster contract.

`v1alpha1` holds the models; `crd` generates the CRD and the reference docs from them.
"""
