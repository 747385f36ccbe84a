"""The CRM core: contacts and their channel identities, consent, and (later) companies and deals."""
