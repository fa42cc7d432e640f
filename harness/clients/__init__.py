"""The clients a reader's browser and integrations would be: SSE, WebSocket,
many streams at once, Chromium.
"""
