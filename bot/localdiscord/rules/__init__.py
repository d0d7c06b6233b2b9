"""What real Discord refuses, as tables and small checks, so the local server refuses it the same way.

Limits come from Discord's OpenAPI description (discord/discord-api-spec) and its developer documentation;
each module cites where a rule comes from. Nothing here touches the server's state: callers pass in what a
rule needs to know (uploaded file names, whether a message exists, computed permissions).
"""
