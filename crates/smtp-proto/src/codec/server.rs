//! Server side: reads commands, AUTH responses and bodies, writes replies.
