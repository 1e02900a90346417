-- Where the gateway last saw each tunnelled router (its NAT's public address and port),
-- so that a restarted gateway can start the handshake there itself instead of waiting
-- up to two minutes for the router's next rekey.
ALTER TABLE routers ADD COLUMN tunnel_endpoint TEXT;
