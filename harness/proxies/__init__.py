"""The proxies under test: their images, how a run starts one, nginx's main
config, and the broken variants.
"""
