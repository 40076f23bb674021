from twisted.application.service import ServiceMaker

mcproxy = ServiceMaker("mcproxy", "mcproxy.tap", "Shared MCP server for browser automation", "mcproxy")
