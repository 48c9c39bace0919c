"""Every problem type the platform answers with: one title each, and what it means.

A problem's ``type`` (RFC 9457) is ``<types URL>/<slug>``, the slug being its
machine ``code`` in lower case with hyphens (``RULE_NOT_FOUND`` is
``rule-not-found``). The rules service serves a page for each type there, as part
of the integration guide, from this catalogue; the guide's tables of the gateway's
answers read their wording from it too. A code raised anywhere must be listed here
(a test reads the services' source for codes), so a developer who follows a type
always finds its page, and the same type always carries the same title.

The statuses are not here: the same type may come with different statuses from
different services (``RULE_NOT_FOUND`` is a 400 refusal of a trigger and a 404 of
the rules API), and the status of an answer is its own.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Where the rules service serves the problem types' pages, under its public URL.
PROBLEM_TYPES_PATH = "/problems"


@dataclass(frozen=True)
class ProblemType:
    code: str
    title: str
    #: What happened, for the developer reading the page (`backticks` mark code).
    meaning: str
    #: What to do about it.
    action: str

    @property
    def slug(self) -> str:
        return slug_of(self.code)


def slug_of(code: str) -> str:
    return code.lower().replace("_", "-")


_NOTHING_RECORDED = "Nothing was recorded."
_FIX_AND_RESEND = "Fix the request; sending it again unchanged gets the same answer."
_RETRY_LATER = "Retry after `Retry-After` seconds with the same request."

_TYPES = (
    # --- Any service ---------------------------------------------------------------
    ProblemType(
        "BAD_REQUEST",
        "Malformed request",
        "The request itself is malformed: a `Content-Length` that is not a number, or a body "
        "that cannot be read as the content type says.",
        "Fix the request; your HTTP library normally sets these headers for you.",
    ),
    ProblemType(
        "INVALID_REQUEST",
        "Invalid request",
        "The body is not JSON, a field is missing, has the wrong type or is too long, an "
        "unknown field was sent, or a text field holds a control character (NUL, anything "
        "below U+0020, U+007F to U+009F) or an unpaired surrogate. The `errors` list names "
        "each field and what is wrong.",
        _FIX_AND_RESEND,
    ),
    ProblemType(
        "INVALID_VALUE",
        "Value cannot be stored",
        "A value passed every check but cannot be stored (a number out of range).",
        "Fix the value; sending it again unchanged gets the same answer.",
    ),
    ProblemType(
        "BODY_TOO_LARGE",
        "Request body too large",
        "The request body is larger than the service accepts (64 KiB unless the operator "
        "changed `MAX_BODY_BYTES`), whether its `Content-Length` says so or it was sent "
        "chunked. Nothing was read further or recorded.",
        "Send the request's fields only: a trigger is a few hundred bytes.",
    ),
    ProblemType(
        "UNSUPPORTED_MEDIA_TYPE",
        "Unsupported media type",
        "The body's `Content-Type` is not one this operation reads.",
        "Send the body as the operation's documentation says (usually `application/json`).",
    ),
    ProblemType(
        "NOT_FOUND",
        "Not found",
        "No resource answers at this path, or the one asked for does not exist.",
        "Check the path and the identifier in it against the API reference.",
    ),
    ProblemType(
        "METHOD_NOT_ALLOWED",
        "Method not allowed",
        "The path exists but does not take this HTTP method. The `Allow` header lists the "
        "methods it takes.",
        "Use one of the methods in `Allow`.",
    ),
    ProblemType(
        "HTTP_ERROR",
        "HTTP error",
        "The request was refused by the HTTP layer for a reason the status code gives.",
        "Read the status code and the `detail`; fix the request.",
    ),
    ProblemType(
        "UNAUTHORIZED",
        "Unauthorized",
        "No `Authorization: Bearer` header (or console session), or the token is expired, "
        "tampered with, not issued by this platform or lacks the scope the operation needs, "
        "or it belongs to a revoked API client or an ended console session.",
        "Get a new token (or sign in again) and retry; if that fails too, ask for new credentials.",
    ),
    ProblemType(
        "FORBIDDEN",
        "Forbidden",
        "The credentials do not allow this operation: an API client asking for what only "
        "business users may read or do, or a token that is not the operator's.",
        "Use credentials that may do this, or ask an administrator for the access.",
    ),
    ProblemType(
        "SERVICE_UNAVAILABLE",
        "Service unavailable",
        "The service cannot reach what it needs (its database) right now. A trigger answered "
        "so is never accepted and then lost.",
        "Retry after `Retry-After` seconds with the same request; a trigger with the same "
        "`requestId` is applied once, whichever attempt recorded it.",
    ),
    # --- Trigger gateway ---------------------------------------------------------
    ProblemType(
        "SIGNATURE_REQUIRED",
        "Request signature required",
        "Your client has a registered public key, so every request must be signed, and "
        "`X-Points-Timestamp` or `X-Points-Request-Signature` is missing.",
        "Sign the request: see Signing requests in the integration guide.",
    ),
    ProblemType(
        "SIGNATURE_EXPIRED",
        "Request signature outside its window",
        "`X-Points-Timestamp` is further from the gateway's clock than the signature window "
        "allows, in either direction.",
        "Check your server's clock (use NTP) and sign each request when you send it.",
    ),
    ProblemType(
        "SIGNATURE_INVALID",
        "Request signature invalid",
        "The signature does not match the request's method, path and query, timestamp and "
        "body under your registered key, is not base64, or the timestamp is not whole seconds.",
        "Sign exactly the bytes you send, with the private key whose public key the operator "
        "registered last.",
    ),
    ProblemType(
        "RATE_LIMITED",
        "Rate limit exceeded",
        "The client sent more requests than its rate limit allows. " + _NOTHING_RECORDED,
        "Wait the number of seconds in `Retry-After`, then send the same request again.",
    ),
    ProblemType(
        "REQUEST_ID_REUSED",
        "Request id reused",
        "This `requestId` was used before by this client with a different body.",
        "Use a new `requestId` for a new request; resend the original body to get the "
        "original answer.",
    ),
    ProblemType(
        "INVALID_CALLBACK_URL",
        "Invalid callback URL",
        "The callback URL is not an https URL (plain http is allowed only on a development "
        "stack), its host name is not valid (IDNA refuses it) or does not resolve, or its "
        "host is a private, loopback, link-local or otherwise non-public address.",
        "Use a publicly reachable https URL.",
    ),
    ProblemType(
        "CLIENT_NOT_READY",
        "Client not ready yet",
        "The client was created a moment ago and the gateway has not received it yet (it "
        "takes milliseconds). " + _NOTHING_RECORDED,
        "Retry after `Retry-After` seconds with the same `requestId`.",
    ),
    ProblemType(
        "CALLBACK_HOST_UNRESOLVED",
        "Callback host not resolved",
        "The host of the callback URL could not be looked up in time. " + _NOTHING_RECORDED,
        "Retry later with the same request; check that the host name exists.",
    ),
    ProblemType(
        "RULE_NOT_FOUND",
        "Rule not found",
        "No rule with this id exists for your organisation.",
        "Check the Rule ID the business shared with you.",
    ),
    ProblemType(
        "ENVIRONMENT_MISMATCH",
        "Wrong environment",
        "The rule belongs to a different environment from your client's: a staging client "
        "cannot trigger a production rule, nor the other way round.",
        "Use the client credentials and URLs of the rule's environment.",
    ),
    ProblemType(
        "RULE_NOT_API_TRIGGERABLE",
        "Rule not API-triggerable",
        "The rule does not have the API-trigger option turned on.",
        "Ask the business to turn on API triggering for the rule.",
    ),
    ProblemType(
        "RULE_INACTIVE",
        "Rule inactive",
        "The rule is a draft, paused or archived.",
        "Ask the business to activate the rule.",
    ),
    ProblemType(
        "RULE_NOT_STARTED",
        "Rule not started",
        "The rule's start date is still ahead.",
        "Trigger it once it has started.",
    ),
    ProblemType(
        "RULE_ENDED",
        "Rule ended",
        "The rule's end date has passed, or the instant its points expire (pointsExpireAt).",
        "Ask the business for a current rule.",
    ),
    ProblemType(
        "CLIENT_NOT_AUTHORIZED",
        "Client not authorised for the rule",
        "Your client is not among the rule's authorised API clients.",
        "Ask the business to authorise your client on the rule.",
    ),
    ProblemType(
        "INVALID_USER_ID",
        "Invalid user id",
        "`userId` is not a string of 1 to 128 characters made of letters, digits and "
        "`. _ : @ + -`, starting with a letter or digit.",
        "Send the member's id in that form.",
    ),
    ProblemType(
        "MEMBER_BLOCKED",
        "Member blocked",
        "The business has blocked this member in this environment. Nothing was recorded; "
        "requests for the member it had already accepted fail with the same reason.",
        "Do not retry: tell the member to contact the business. Triggers are accepted again "
        "once the business unblocks the member.",
    ),
    ProblemType(
        "INVALID_AMOUNT",
        "Invalid amount",
        "`amount` is not a whole number from 1 to 9007199254740991 (a decimal, a string, a "
        "boolean, zero or a negative number).",
        "Send a positive integer.",
    ),
    ProblemType(
        "AMOUNT_OVER_MAXIMUM",
        "Amount over the rule's maximum",
        "`amount` is more than the rule allows in one request.",
        "Send a smaller amount.",
    ),
    ProblemType(
        "CAP_EXCEEDED",
        "Rule cap exceeded",
        "The rule's total cap would be exceeded by this amount.",
        "The rule has run out of points; ask the business to raise its cap.",
    ),
    ProblemType(
        "MEMBER_CAP_EXCEEDED",
        "Member cap exceeded",
        "This member's cap on the rule would be exceeded by this amount.",
        "The member has had all the points this rule gives one member.",
    ),
    ProblemType(
        "REQUEST_NOT_FOUND",
        "Request not found",
        "Your client never sent this `requestId`, or it was forgotten after the retention period.",
        "Check the `requestId`; each client sees only its own requests.",
    ),
    # --- Rules API and console ---------------------------------------------------
    ProblemType(
        "INVALID_CREDENTIALS",
        "Sign-in refused",
        "The e-mail address and password do not match an active user.",
        "Check both and sign in again; after repeated failures the address must wait.",
    ),
    ProblemType(
        "TOO_MANY_LOGIN_ATTEMPTS",
        "Too many sign-in attempts",
        "Too many sign-in attempts failed from this network address, or for this account, in "
        "a short time.",
        "Wait the number of seconds in `Retry-After` before the next attempt.",
    ),
    ProblemType(
        "CSRF_TOKEN_INVALID",
        "CSRF token missing or wrong",
        "A change made with the console's cookie session lacks the session's CSRF token "
        "header, or the header does not match the session.",
        "Reload the console page and repeat the change; API callers send a bearer token "
        "instead of the cookie.",
    ),
    ProblemType(
        "READ_ONLY_ROLE",
        "Read-only role",
        "A viewer cannot change anything.",
        "Ask an administrator of the organisation for the editor or admin role.",
    ),
    ProblemType(
        "ADMIN_ROLE_REQUIRED",
        "Admin role required",
        "Only an admin of the organisation can manage API clients and the team.",
        "Ask an administrator of the organisation to do it, or for the admin role.",
    ),
    ProblemType(
        "ORGANISATION_NOT_FOUND",
        "Organisation not found",
        "No organisation has this id.",
        "Check the organisation id.",
    ),
    ProblemType(
        "USER_NOT_FOUND",
        "User not found",
        "No user of this organisation has this id.",
        "Check the user id.",
    ),
    ProblemType(
        "EMAIL_TAKEN",
        "E-mail address taken",
        "A user with this e-mail address exists already.",
        "Use another address, or sign in as the existing user.",
    ),
    ProblemType(
        "INVALID_EMAIL",
        "Invalid e-mail address",
        "The e-mail address is not one mail can be sent to.",
        "Send a valid address, such as `name@example.com`.",
    ),
    ProblemType(
        "INVALID_NAME",
        "Invalid name",
        "The name is empty.",
        "Send a name.",
    ),
    ProblemType(
        "INVALID_ROLE",
        "Invalid role",
        "The role is not one of `viewer`, `editor` and `admin`.",
        "Send one of those roles.",
    ),
    ProblemType(
        "ALREADY_A_MEMBER",
        "Already a member",
        "This e-mail address belongs to an active user of the organisation already; an "
        "invitation is for someone who has not joined yet.",
        "Change the user's role instead, or ask them to sign in (and reset their password "
        "with an operator if they lost it).",
    ),
    ProblemType(
        "LAST_ADMIN",
        "Last admin",
        "The change would leave the organisation without an admin: its last admin cannot be "
        "demoted or removed.",
        "Make another user an admin first, then change or remove this one.",
    ),
    ProblemType(
        "INVITATION_INVALID",
        "Invitation link not valid",
        "The invitation link is unknown, was used already, or has expired (an invitation works "
        "once, for a limited time, and inviting the address again replaces it). The answer "
        "does not say which, as the remedy is the same.",
        "Ask an admin of your organisation to invite you again; if you set your password "
        "already, sign in.",
    ),
    ProblemType(
        "WEAK_PASSWORD",
        "Password too weak",
        "The password is shorter than the platform accepts.",
        "Choose a longer password.",
    ),
    ProblemType(
        "CLIENT_NOT_FOUND",
        "API client not found",
        "No API client of this organisation has this id.",
        "Check the client id (`points client list`, or the console).",
    ),
    ProblemType(
        "CLIENT_REVOKED",
        "API client revoked",
        "The API client was revoked; a revoked client cannot be changed or used again.",
        "Create a new client.",
    ),
    ProblemType(
        "INVALID_PUBLIC_KEY",
        "Public key refused",
        "The public key is not a PEM-encoded RSA key of the size request signing needs.",
        "Register the PEM public key of an RSA key pair that is large enough.",
    ),
    ProblemType(
        "INVALID_ENVIRONMENT",
        "Invalid environment",
        "The environment is not `staging` or `production`.",
        "Send one of those environments.",
    ),
    ProblemType(
        "INVALID_RULE_TYPE",
        "Invalid rule type",
        "The rule type is not `earn` or `redeem`.",
        "Send one of those types.",
    ),
    ProblemType(
        "INVALID_DATE",
        "Invalid date",
        "A date lacks its time zone offset.",
        "Send an instant such as `2027-01-31T23:00:00Z`.",
    ),
    ProblemType(
        "INVALID_PERIOD",
        "Invalid period",
        "The end of the period is not after its start.",
        "Send an end that comes after the start.",
    ),
    ProblemType(
        "INVALID_AUTHORIZED_CLIENTS",
        "Invalid authorised clients",
        "Some of the API clients named are not active clients of this organisation in the "
        "rule's environment.",
        "Name only active clients of the rule's environment.",
    ),
    ProblemType(
        "CAP_BELOW_USAGE",
        "Cap below usage",
        "The new cap is below the points the rule has already moved.",
        "Set a cap at least as high as the rule's usage.",
    ),
    ProblemType(
        "STALE_VERSION",
        "Stale version",
        "The rule changed since the version the change was made against.",
        "Reload the rule and apply the change again.",
    ),
    ProblemType(
        "RULE_ARCHIVED",
        "Rule archived",
        "An archived rule cannot be changed.",
        "Copy its settings into a new rule.",
    ),
    ProblemType(
        "RULE_IMMUTABLE",
        "Rule field fixed",
        "A rule's type and environment cannot change after it was first activated.",
        "Create a new rule with the type or environment you need.",
    ),
    ProblemType(
        "INVALID_TRANSITION",
        "Invalid status change",
        "The rule's status cannot change to the one asked for from the one it has (an "
        "archived rule cannot be activated, for example).",
        "Read the rule's status, and see the console guide for the changes each allows.",
    ),
    ProblemType(
        "ACTIVATION_BLOCKED",
        "Activation blocked",
        "The rule cannot be activated yet: the `problems` list says what it lacks, each with "
        "its `field`, `code` (`NO_AUTHORIZED_CLIENT`, `CLIENT_NOT_ACTIVE`, `END_IN_PAST`, "
        "`EXPIRY_IN_PAST`) "
        "and `detail`.",
        "Complete the rule as the problems say, then activate it.",
    ),
    ProblemType(
        "ALREADY_PRODUCTION",
        "Already a production rule",
        "Only a staging rule can be promoted; this one is in production already.",
        "Promote the staging rule it came from, or change this one.",
    ),
    ProblemType(
        "RULE_NOT_ACTIVE",
        "Rule not active",
        "Only an active rule can be shared.",
        "Activate the rule, then share it.",
    ),
    ProblemType(
        "SHARE_EMAIL_LIMIT",
        "Share e-mail limit reached",
        "The organisation sent share e-mails to as many addresses as it may in a day.",
        "Wait the number of seconds in `Retry-After`, or share the rule's id another way.",
    ),
    ProblemType(
        "EXPIRY_POLICY_CONFLICT",
        "Conflicting expiry policies",
        "Both `pointsExpireAfterDays` and `pointsExpireAt` were set; a rule has one policy.",
        "Set one of them.",
    ),
    ProblemType(
        "EXPIRY_ON_REDEEM_RULE",
        "Expiry on a redeem rule",
        "Only an earn rule's points can expire; a redeem rule has no expiry policy.",
        "Remove the expiry policy, or make the rule an earn rule.",
    ),
    ProblemType(
        "EXPIRY_BEFORE_RULE_ENDS",
        "Expiry before the rule ends",
        "`pointsExpireAt` is not after the rule's start or end, so points it awards would "
        "expire as they are awarded.",
        "Choose an expiry after the rule's end.",
    ),
    ProblemType(
        "EXPIRY_IN_PAST",
        "Expiry in the past",
        "`pointsExpireAt` has passed.",
        "Choose a later instant.",
    ),
    ProblemType(
        "LEDGER_UNAVAILABLE",
        "Ledger unavailable",
        "The console could not reach the ledger to read balances or transactions.",
        _RETRY_LATER,
    ),
    ProblemType(
        "NOTIFIER_UNAVAILABLE",
        "Notifier unavailable",
        "The console could not reach the notifier to read the callback log or replay a callback.",
        _RETRY_LATER,
    ),
    ProblemType(
        "CONFLICT",
        "Conflict",
        "The change conflicts with the resource's current state.",
        "Reload the resource and decide again.",
    ),
    # --- Ledger ------------------------------------------------------------------
    ProblemType(
        "UNKNOWN_TIMEZONE",
        "Unknown timezone",
        "The `timezone` parameter of an activity read is not an IANA timezone name.",
        "Send a name such as `Europe/Paris`, `America/New_York` or `UTC`.",
    ),
    ProblemType(
        "INVALID_ACTIVITY_RANGE",
        "Invalid activity range",
        "The `from` of an activity read does not come before its `to`, or one of them lies "
        "before 1970 or after 2200.",
        _FIX_AND_RESEND,
    ),
    ProblemType(
        "ACTIVITY_RANGE_TOO_LARGE",
        "Activity range too large",
        "An activity read would answer more than 1000 hours or days.",
        "Narrow the range, or read it by day rather than by hour.",
    ),
    ProblemType(
        "UNKNOWN_ENVIRONMENT",
        "Unknown environment",
        "The `environment` parameter is not `staging` or `production`.",
        "Send one of those environments.",
    ),
    ProblemType(
        "ENVIRONMENT_FORBIDDEN",
        "Environment not allowed",
        "An API client reads only its own environment's ledger.",
        "Ask with the environment of your client's credentials.",
    ),
    ProblemType(
        "INVALID_CURSOR",
        "Invalid cursor",
        "The `cursor` is not one this list gave out.",
        "Start again from the first page, and pass on only the `nextCursor` you were given.",
    ),
    ProblemType(
        "TRANSACTION_NOT_FOUND",
        "Transaction not found",
        "No transaction of this organisation and environment has this id.",
        "Check the transaction id.",
    ),
    ProblemType(
        "NOT_REVERSIBLE",
        "Transaction not reversible",
        "The transaction cannot be reversed; the `detail` says why.",
        "Read the transaction before reversing it.",
    ),
    ProblemType(
        "REVERSAL_NOT_REVERSIBLE",
        "A reversal cannot be reversed",
        "The transaction is itself a reversal.",
        "Reverse the original transaction's effect with a new transaction instead.",
    ),
    ProblemType(
        "EXPIRY_NOT_REVERSIBLE",
        "An expiry cannot be reversed",
        "The transaction is the expiry of earned points.",
        "Award the member points again with an earn rule if they should have them.",
    ),
    ProblemType(
        "REJECTED_NOT_REVERSIBLE",
        "A rejected request cannot be reversed",
        "The transaction was rejected and moved no points.",
        "Nothing to reverse.",
    ),
    ProblemType(
        "BALANCE_LIMIT_EXCEEDED",
        "Balance limit exceeded",
        "Reversing the transaction would take the member's or the rule pool's balance past "
        "a limit the ledger keeps (below zero, or over the most an account may hold).",
        "Nothing was reversed; settle the difference with another transaction.",
    ),
    ProblemType(
        "REVERSAL_ID_IN_USE",
        "Reversal id in use",
        "This reversal id was used before for another reversal.",
        "Use a new reversal id; resend the same reversal to get its original answer.",
    ),
    ProblemType(
        "REVERSAL_REASON_REQUIRED",
        "Reversal reason required",
        "A reversal needs a reason.",
        "Say why the transaction is reversed.",
    ),
    # --- Notifier ----------------------------------------------------------------
    ProblemType(
        "DELIVERY_NOT_PARKED",
        "Delivery not parked",
        "No parked or failed delivery has this id: it does not exist, is still being "
        "retried, or was delivered.",
        "List the parked and failed deliveries and replay one of them.",
    ),
)

#: Every problem type, by its machine code.
PROBLEM_TYPES: dict[str, ProblemType] = {kind.code: kind for kind in _TYPES}
#: Every problem type, by its slug (the last segment of its type URI).
BY_SLUG: dict[str, ProblemType] = {kind.slug: kind for kind in _TYPES}
