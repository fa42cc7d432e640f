"""Where runs happen: containers, private networks, the test CA and ACME
server, the page's steps, and the Sybil glue.
"""
