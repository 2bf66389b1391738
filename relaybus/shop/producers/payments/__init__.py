"""The payments service: charges and refunds through a payment gateway (schema ``payments``)."""
