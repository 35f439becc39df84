"""The product brief's grpcurl request bodies, verbatim (../shared/seed/orisun-README.md).

One copy for every test that runs or parses them."""

BRIEF_SAVE_EVENTS = r"""
{
  "boundary": "users",
  "events": [
    {
      "event_id": "0191b93c-5f3c-75c8-92ce-5a3300709178",
      "event_type": "UserRegistered",
      "tags": [
        {"key": "tenant_id", "value": "tenant-456"},
        {"key": "source", "value": "web_signup"}
      ],
      "data": "{\"email\": \"john.doe@example.com\", \"username\": \"johndoe\", \"full_name\": \"John Doe\"}",
      "metadata": "{\"source\": \"web_signup\", \"ip_address\": \"192.168.1.1\"}"
    },
    {
      "event_id": "0191b93c-5f3c-75c8-92ce-5a3300709179",
      "event_type": "UserProfileCompleted",
      "tags": [
        {"key": "tenant_id", "value": "tenant-456"}
      ],
      "data": "{\"phone\": \"+1234567890\", \"address\": \"123 Main St, City, Country\"}",
      "metadata": "{\"completed_at\": \"2024-01-20T15:30:00Z\"}"
    }
  ],
  "stream": {
    "expected_version": -1,
    "name": "user-1234"
  }
}
"""

BRIEF_GET_EVENTS = r"""
{
  "boundary": "orders",
  "stream": {
    "name": "order-789"
  },
  "query": {
    "criteria": [
      {
        "tags": [
          {"key": "event_type", "value": "OrderCreated"}
        ]
      },
      {
        "tags": [
          {"key": "event_type", "value": "PaymentProcessed"}
        ]
      },
      {
        "tags": [
          {"key": "event_type", "value": "OrderShipped"}
        ]
      }
    ]
  },
  "count": 100,
  "direction": "ASC",
  "last_retrieved_position": {
    "commit_position": "1000",
    "prepare_position": "999"
  }
}
"""

BRIEF_SUBSCRIBE_TO_EVENTS = r"""
{
  "subscriber_name": "payment-processor",
  "boundary": "payments",
  "query": {
    "criteria": [
      {
        "tags": [
          {"key": "event_type", "value": "PaymentInitiated"}
        ]
      },
      {
        "tags": [
          {"key": "event_type", "value": "PaymentAuthorized"}
        ]
      },
      {
        "tags": [
          {"key": "event_type", "value": "PaymentFailed"}
        ]
      }
    ]
  }
}
"""

BRIEF_PUBLISH = r"""
{
  "subject": "order.notifications",
  "data": "{\"order_id\": \"order-789\", \"status\": \"shipped\", \"customer_email\": \"john.doe@example.com\"}",
  "metadata": "{\"priority\": \"high\", \"notification_type\": \"shipping_update\"}"
}
"""

BRIEF_SUBSCRIBE_TO_PUBSUB = r"""
{
  "subject": "inventory.updates",
  "consumer_name": "inventory-processor"
}
"""
