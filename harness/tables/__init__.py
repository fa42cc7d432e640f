"""The measurements, and the data and tables under data/ and generated/ they
write for the pages.
"""
