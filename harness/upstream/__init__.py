"""The DorkOS the proxies talk to: the mock, and a real DorkOS built from
source held against it.
"""
